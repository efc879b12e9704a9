"""The persona engine: an open-model load generator for the lab's API.

One module per concern: `schedule` (rate functions and the arrival schedule), `journeys`
(personas, journeys and the synthetic population), `dispatch` (arrivals sent at their intended
time, in-flight cap, retries, stop), `ledger` (the acknowledged writes, write outages per
shard and the slowest request; how they travel and merge), `verify` (the read-back of the
ledger and the audit-chain check after the load), `report` (HDR histograms, the summary and the
compact termination-message format the operator merges), `metrics` (live Prometheus metrics),
`config` (the operator-rendered configuration and the quick-run flags) and `cli`.
"""
