"""vmflow's services: api, scheduler, host_worker, storage."""
