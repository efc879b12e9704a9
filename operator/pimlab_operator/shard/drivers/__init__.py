"""Engine drivers of the failover manager (shard/failover_pass.py `Driver`)."""
