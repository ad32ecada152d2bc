"""The REST API: VM inventory as users see it, operations, hosts, images, events."""
