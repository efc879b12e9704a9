"""A report's sections written out: report.md with its PNGs beside it, and report.html with the
same PNGs embedded as data URIs and its CSS inline, so the one file can be mailed or attached to
a ticket and shows everything offline."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from pimlab.report.drill import Report, Section, Table

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 1120px;
       margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
img { max-width: 100%; border: 1px solid #eee; }
.source { color: #555; font-size: 12px; margin: .2em 0; }
.source code, pre { background: #f6f6f6; }
pre { padding: .6em; font-size: 12px; white-space: pre-wrap; overflow-wrap: anywhere; }
.missing { color: #8a4b00; background: #fff4e0; padding: .4em .6em; border-left: 3px solid #e69500; }
.Passed { color: #1e7b34; } .Failed, .Aborted { color: #b42318; }
"""


def _inline(text: str) -> str:
    """Escaped HTML with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in table.header) + " |",
             "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return lines + [""]


def markdown(report: Report) -> str:
    lines = [f"# {report.title}: {report.verdict}", ""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        if section.image:
            lines += ([f"![{section.title}]({section.image})", ""] if section.png is not None
                      else [f"> **Figure missing:** {section.missing}", ""])
        if section.table and section.table.rows:
            lines += _md_table(section.table)
        for text in section.text:
            lines += [text, ""]
        if section.code:
            lines += ["```", *section.code, "```", ""]
        lines += [f"*Source:* {source}  " for source in section.sources] + [""]
    return "\n".join(lines)


def _html_section(section: Section) -> list[str]:
    out = [f"<section><h2>{html.escape(section.title)}</h2>"]
    if section.image:
        if section.png is not None:
            data = base64.b64encode(section.png).decode()
            out.append(f'<figure><img alt="{html.escape(section.title)}" src="data:image/png;base64,{data}"></figure>')
        else:
            out.append(f'<p class="missing"><strong>Figure missing:</strong> {_inline(section.missing or "")}</p>')
    if section.table and section.table.rows:
        out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in section.table.header) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in section.table.rows]
        out.append("</table>")
    out += [f"<p>{_inline(text)}</p>" for text in section.text]
    if section.code:
        out.append("<pre>" + html.escape("\n".join(section.code)) + "</pre>")
    out += [f'<p class="source"><em>Source:</em> {_inline(source)}</p>' for source in section.sources]
    return out + ["</section>"]


def html_page(report: Report) -> str:
    verdict = html.escape(report.verdict)
    body = [f'<h1>{html.escape(report.title)}: <span class="{verdict}">{verdict}</span></h1>']
    for section in report.sections:
        body += _html_section(section)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(report.title)}: {verdict}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write(report: Report, out: Path) -> list[Path]:
    """report.html, report.md and every drawn PNG into `out`; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for section in report.sections:
        if section.image and section.png is not None:
            path = out / section.image
            path.write_bytes(section.png)
            written.append(path)
    for name, text in (("report.md", markdown(report)), ("report.html", html_page(report))):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written
