"""Container names: /etc/hosts, /etc/resolv.conf and /etc/hostname (files.py); the embedded
DNS server comes later."""
