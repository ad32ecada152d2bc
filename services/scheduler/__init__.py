"""Placement: host states from heartbeats, filters and weighers, capacity claims."""
