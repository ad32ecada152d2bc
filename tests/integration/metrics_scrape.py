"""Reading the services' /metrics in tests: the API's (admin token), a process's own port, and a
host worker's inside its lab namespace."""

from __future__ import annotations

import subprocess
import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families

from deploy import lab
from deploy.client import VmflowClient

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in samples.items() if n == name and wanted <= set(series))


def scrape_api(api: VmflowClient) -> Samples:
    response = api.request("GET", "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def scrape(stack_cfg, process: str) -> Samples:
    port = stack_cfg.metrics_ports[process]
    return parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)


def scrape_schedulers(stack_cfg) -> Samples:
    """Every scheduler replica's samples, summed: a placement or a failover is counted by the
    replica that handled it."""
    summed: Samples = {}
    for name in stack_cfg.scheduler_names():
        for key, sample in scrape(stack_cfg, name).items():
            summed[key] = summed.get(key, 0.0) + sample
    return summed


def scrape_host_worker(stack_cfg, host_id: str) -> Samples:
    """A host worker listens on its lab address, reachable only inside its host's namespace."""
    host = next(h for h in lab.load_lab(stack_cfg.lab_name, stack_cfg.root / "lab").hosts if h.host_id == host_id)
    url = f"http://{host.address}:{stack_cfg.metrics_ports[f'host-worker-{host_id}']}/metrics"
    fetch = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    text = subprocess.run(["ip", "netns", "exec", host.namespace, sys.executable, "-c", fetch],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    return parse(text)
