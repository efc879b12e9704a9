"""`pimlab instance`: the PostgreSQL instance manager that runs in each pod of a postgres Shard."""
