"""cnm: Docker's container networking (the Container Network Model) rebuilt in Python.

Layout, bottom to top; a module imports only from layers below its own:

    errors, model     pure: one exception tree; frozen dataclasses and validated values
    kernel, store     the only code touching the host (netlink, netns, sysctl, nft); persistence
    ipam, firewall    address pools over the store; rules rendered from data
    drivers           bridge / host / null network drivers (CNM driver protocol)
    dns, portmap      container name files and (later) DNS server; port publishing
    runtime           containers through runc: images, rootfs, bundles, processes
    engine            the CNM controller: plan -> apply -> undo, the only place combining the above
    api               Docker Engine API routes and JSON shapes; the one error -> HTTP map
    daemon            composition root: picks concrete implementations and wires them
    cli               Docker's verbs; talks HTTP to cnmd only, never imports the engine

Importing ``cnm`` has no side effects and imports nothing heavy (the CLI's start-up time counts).
"""

__version__ = "0.1.0"
