"""The only code that touches the host: netlink (pyroute2), namespaces, sysctl, mounts.

Every change is logged at DEBUG on logger ``cnm.kernel`` as the command a person would type.
"""
