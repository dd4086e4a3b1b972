"""cnmd: the composition root.  The only package that picks concrete implementations (store,
firewall backend, drivers, runtime) and wires them together."""
