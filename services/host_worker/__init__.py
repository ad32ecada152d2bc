"""The agent on each KVM host: its libvirt connection, domains, heartbeats and lifecycle events."""
