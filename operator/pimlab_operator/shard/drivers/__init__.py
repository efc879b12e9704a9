"""Engine drivers of the failover manager (shard/manager.py `Driver`)."""
