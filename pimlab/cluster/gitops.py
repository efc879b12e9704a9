"""`pimlab gitops`: the lab delivered from Git by a real Flux, on the local cluster.

Up, in order, each step said before it runs:
1. the local cluster (pimlab.cluster.local_cluster);
2. a bare clone of this tree's HEAD, served on loopback by `git http-backend`
   (pimlab.cluster.git_server) as branch `main`;
3. Flux's CRDs (from the built modules), its controllers' namespace, ServiceAccounts and RBAC
   (templates/flux/controllers.yaml.j2), then source-controller and kustomize-controller as
   local processes (built by pimlab.cluster.flux_build), each with its ServiceAccount's token;
4. bootstrap: the GitRepository and Kustomizations of clusters/cluster-a/flux.yaml, with the
   GitRepository's URL pointed at the loopback server. From here on Flux applies everything
   from Git: the lab's CRDs, the operator's namespace, RBAC and Deployment, the samples.
   cluster-a's HelmRepositories/HelmReleases (prometheus-operator's CRDs, kube-prometheus-stack,
   the Grafana Alloy log and trace agent, Chaos Mesh) are not applied: no helm-controller runs
   here and no chart repository is reachable. prometheus-operator's CRDs come from
   crds/thirdparty/ instead, as `make lab` installs them (the operator's ServiceMonitor, in
   clusters/base/operator, needs them);
5. the operator: its Deployment is Flux's, but kwok only simulates its pod, so the operator
   runs as a local process with the token of the ServiceAccount Flux created (the RBAC from
   Git is what it is held to), as `make lab` does. The namespaces Flux fills (the operator's
   and the samples') are made first, if missing, tolerating the kwok nodes' taint: with a real
   node beside them, their pods are simulated as with kwok nodes only.

Every process is recorded in `.lab/cluster/pids/` like the control plane's, and
`pimlab cluster down` stops them (gitops_processes.stop()).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

from pimlab.cluster import flux_build, monitoring
from pimlab.cluster.gitops_processes import COMPONENTS, REPOSITORY, gitops_dir, running, served_repository
from pimlab.cluster.handle import write_sa_kubeconfig
from pimlab.cluster.layout import HOST, Layout
from pimlab.cluster.local_cluster import LocalCluster
from pimlab.cluster.local_operator import OPERATOR_NAMESPACE, lab_operator, write_operator_kubeconfig
from pimlab.cluster.procs import ClusterError, Component, http_ok, port_open, start
from pimlab_operator.render import render

NAMESPACE = "flux-system"
BRANCH = "main"
LABELS = {"app.kubernetes.io/part-of": "pim-sre-lab", "app.kubernetes.io/component": "gitops"}
FLUX_MANIFEST = Path("clusters/cluster-a/flux.yaml")
#: what the local Flux applies from cluster A's file: the Git path, not the Helm one
GIT_KINDS = ("GitRepository", "Kustomization")
#: the samples' namespace, which Flux fills from samples/
LAB_NAMESPACE = "lab"


def url(layout: Layout) -> str:
    return f"http://{HOST}:{layout.ports.git_http}/{REPOSITORY}.git"


#: How the local Flux judges the Lab's health. The samples' Shards are SQL Server, which cannot
#: run here (their pods are simulated on kwok nodes), so the Lab is truthfully never Ready
#: (`ShardsNotReady`); what the local Flux can wait for is every service rolled out from the
#: commit it applied. cluster A as users run it keeps the plain Ready check.
LAB_ROLLED_OUT = {
    "apiVersion": "pim-sre.lab/v1alpha1", "kind": "Lab",
    "current": "status.observedGeneration == metadata.generation && "
               "status.conditions.exists(e, e.type == 'Progressing' && e.status == 'False')",
    "failed": "status.conditions.exists(e, e.type == 'Ready' && e.reason == 'InvalidSpec')",
}


def bootstrap_documents(layout: Layout, home: Path) -> list[dict]:
    """cluster A's GitRepository and Kustomizations, the GitRepository pointed at the loopback
    server's `main`, and the Lab's health judged by its services (`LAB_ROLLED_OUT`)."""
    docs = [d for d in yaml.safe_load_all((home / FLUX_MANIFEST).read_text())
            if d and d["kind"] in GIT_KINDS]
    for doc in docs:
        if doc["kind"] == "GitRepository":
            doc["spec"]["url"] = url(layout)
            doc["spec"]["ref"] = {"branch": BRANCH}
        elif any(check["kind"] == "Lab" for check in doc["spec"].get("healthChecks") or []):
            doc["spec"]["healthCheckExprs"] = [LAB_ROLLED_OUT]
    return docs


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClusterError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


class GitOps:
    def __init__(self, root: Path | str = ".", out=sys.stdout):
        self.plane = LocalCluster(root, log=out)
        self.layout = self.plane.layout
        self.operator = lab_operator(self.layout)
        self.out = out
        self.progress = self.plane.progress

    def say(self, message: str) -> None:
        self.plane.say(message)

    def kubectl(self, *args: str, **kwargs):
        return self.plane.kubectl(*args, **kwargs)

    # -- the Git server ----------------------------------------------------------------------

    def publish(self, source: Path, ref: str = "HEAD") -> str:
        """Push `ref` of the repository at `source` to the served repository's `main`; return
        the commit served."""
        repo = served_repository(self.layout)
        if not (repo / "HEAD").exists():
            repo.mkdir(parents=True, exist_ok=True)
            git("init", "--quiet", "--bare", str(repo))
            git("symbolic-ref", "HEAD", f"refs/heads/{BRANCH}", cwd=repo)
        git("push", "--quiet", "--force", str(repo), f"{ref}:refs/heads/{BRANCH}", cwd=source)
        return git("rev-parse", BRANCH, cwd=repo)

    def git_server(self) -> Component:
        root = served_repository(self.layout).parent
        return Component("git-server", Path(sys.executable),
                         ["-m", "pimlab.cluster.git_server", "--root", str(root),
                          "--port", str(self.layout.ports.git_http)],
                         healthy=lambda: port_open(self.layout.ports.git_http))

    # -- Flux --------------------------------------------------------------------------------

    def install(self) -> None:
        """Flux's CRDs, and its controllers' namespace, ServiceAccounts and RBAC; the monitoring
        CRDs, in place of cluster A's HelmRelease monitoring-crds."""
        self.say("installing the monitoring.coreos.com CRDs from crds/thirdparty/ (cluster A's "
                 "HelmRelease monitoring-crds installs them where helm-controller runs)")
        monitoring.install_crds(self.plane)
        files = flux_build.crd_files()
        self.say(f"installing Flux's CRDs ({len(files)}, from the built modules)")
        for path in files:
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     *[f"crd/{yaml.safe_load(p.read_text())['metadata']['name']}" for p in files])
        role = yaml.safe_load((flux_build.module_dir("source-controller")
                               / "config/rbac/role.yaml").read_text())
        self.say(f"installing the controllers' namespace {NAMESPACE}, ServiceAccounts and RBAC")
        docs = render("flux/controllers.yaml.j2", namespace=NAMESPACE, labels=LABELS,
                      source_rules=role["rules"])
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                     input=yaml.safe_dump_all(docs))

    def controllers(self) -> list[Component]:
        ports, state = self.layout.ports, gitops_dir(self.layout)
        artifacts = state / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        found = []
        for name, health, extra in (
            ("source-controller", ports.flux_source_health,
             [f"--storage-path={artifacts}", f"--storage-addr={HOST}:{ports.flux_artifacts}",
              f"--storage-adv-addr={HOST}:{ports.flux_artifacts}"]),
            ("kustomize-controller", ports.flux_kustomize_health,
             # dependsOn re-checked every 5 s, not 30: a commit reaches pim-lab sooner
             ["--no-remote-bases=true", "--requeue-dependency=5s"]),
        ):
            kubeconfig = state / f"{name}.kubeconfig"
            write_sa_kubeconfig(self.plane, NAMESPACE, name, kubeconfig)
            found.append(Component(
                name, flux_build.binaries()[name],
                ["--metrics-addr=0", f"--health-addr={HOST}:{health}",
                 "--enable-leader-election=false", "--log-encoding=console", *extra],
                healthy=lambda health=health: http_ok(f"http://{HOST}:{health}/readyz"),
                timeout=120, env={"KUBECONFIG": str(kubeconfig), "RUNTIME_NAMESPACE": NAMESPACE}))
        return found

    def bootstrap(self, home: Path) -> None:
        for namespace in (OPERATOR_NAMESPACE, LAB_NAMESPACE):
            self.plane.ensure_kwok_namespace(namespace)
        self.say(f"bootstrapping: {FLUX_MANIFEST}'s GitRepository and Kustomizations, "
                 f"the source at {url(self.layout)} (branch {BRANCH})")
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                     input=yaml.safe_dump_all(bootstrap_documents(self.layout, home)))

    def reconcile(self) -> None:
        """Ask source-controller to fetch now (what `flux reconcile source git` does); the
        Kustomizations follow a new revision by themselves."""
        self.kubectl("annotate", "--overwrite", "-n", NAMESPACE, f"gitrepository/{REPOSITORY}",
                     f"reconcile.fluxcd.io/requestedAt={time.time_ns()}")

    def wait_ready(self, kustomization: str, timeout: int = 300) -> None:
        proc = self.kubectl("wait", "--for=condition=Ready", "-n", NAMESPACE,
                            f"kustomization/{kustomization}", f"--timeout={timeout}s",
                            check=False, timeout=timeout + 10)
        if proc.returncode != 0:
            status = self.kubectl("get", "kustomization", kustomization, "-n", NAMESPACE,
                                  "-o", "jsonpath={.status.conditions}", check=False).stdout
            raise ClusterError(f"Kustomization {kustomization} did not become Ready: {status}; "
                               f"see {self.layout.log('kustomize-controller')}")

    # -- all of it ---------------------------------------------------------------------------

    def up(self, source: Path, operator: bool = True) -> None:
        self.plane.up()
        flux_build.build_step(self.progress)
        commit = self.publish(source)
        self.say(f"serving {source} at {commit[:12]} as {url(self.layout)} (branch {BRANCH})")
        if "git-server" not in running(self.layout):
            start(self.layout, self.git_server(), self.progress)
        self.install()
        alive = running(self.layout)
        for component in self.controllers():
            if component.name not in alive:
                start(self.layout, component, self.progress)
        self.bootstrap(source)
        self.say("waiting for Flux to apply the CRDs and the operator (pim-crds, pim-operator)")
        self.wait_ready("pim-operator")
        if operator:
            self.say("the operator's Deployment is applied; kwok only simulates its pod, so the "
                     "operator runs as a local process with the token of Flux's ServiceAccount")
            write_operator_kubeconfig(self.plane, self.operator.kubeconfig)
            pid = self.operator.start()
            self.say(f"operator started (pid {pid}, log {self.operator.log})")

    def status(self) -> str:
        proc = self.kubectl("get", "gitrepositories,kustomizations", "-n", NAMESPACE, check=False)
        alive = running(self.layout)
        lines = [f"{name:<24} {'running pid ' + str(alive[name]) if name in alive else 'stopped'}"
                 for name in COMPONENTS]
        return "\n".join(lines) + "\n\n" + (proc.stdout + proc.stderr).rstrip()
