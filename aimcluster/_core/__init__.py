"""The engine: the cluster and its fleet of pools (placement and failover), and the jobs
and comparisons run on it.
"""
