"""The sequences that change the world: provision, delete, power actions.

Workflow modules do no I/O: they reach hosts, storage, the scheduler and the inventory only
through activities, named by string so no service code is imported here.
"""
