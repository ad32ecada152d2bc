"""``vmflow network ...`` and ``vmflow vm nic ...``: virtual networks and the NICs on them."""

from __future__ import annotations

from collections.abc import Callable

import typer
from rich.table import Table

network_app = typer.Typer(no_args_is_help=True, help="Virtual networks: one L2 segment across every host.")
nic_app = typer.Typer(no_args_is_help=True, help="Plug NICs into a VM and pull them out (running or not).")


def parse_nic(value: str) -> dict:
    """``NETWORK_ID`` or ``NETWORK_ID=IP``, as ``vmflow vm create --network`` takes it."""
    network_id, _, ip = value.partition("=")
    return {"network_id": network_id, **({"ip": ip} if ip else {})}


def register(app: typer.Typer, vm_app: typer.Typer, client: Callable, api: Callable, follow: Callable,
             console) -> None:
    """Add the commands; ``client``, ``api`` and ``follow`` are the CLI's own helpers."""
    app.add_typer(network_app, name="network")
    vm_app.add_typer(nic_app, name="nic")

    @network_app.command("create")
    def network_create(name: str, cidr: str, gateway: str = typer.Option(None, help="an address of the subnet"),
                       dhcp: bool = typer.Option(True, help="serve each NIC its address by DHCP"),
                       wait: bool = True) -> None:
        c = client()
        body = {"name": name, "cidr": cidr, "dhcp": dhcp, **({"gateway": gateway} if gateway else {})}
        accepted = api(lambda: c.call("POST", "/v1/networks", json=body))
        console.print(f"network {accepted['target']}")
        follow(c, accepted, wait)

    @network_app.command("list")
    def network_list() -> None:
        table = Table("id", "name", "cidr", "gateway", "dhcp", "vni", "state")
        for net in api(lambda: client().call("GET", "/v1/networks")):
            table.add_row(net["id"], net["name"], net["cidr"], net["gateway"] or "-",
                          net["dhcp_address"] or "off", str(net["vni"]), net["state"])
        console.print(table)

    @network_app.command("ports")
    def network_ports(network_id: str) -> None:
        table = Table("id", "kind", "vm", "mac", "ip", "attached")
        for port in api(lambda: client().call("GET", f"/v1/networks/{network_id}/ports")):
            table.add_row(port["id"], port["kind"], port["vm_id"] or "-", port["mac"], port["ip"],
                          "yes" if port["attached"] else "no")
        console.print(table)

    @network_app.command("delete")
    def network_delete(network_id: str, wait: bool = True) -> None:
        c = client()
        follow(c, api(lambda: c.call("DELETE", f"/v1/networks/{network_id}")), wait)

    @nic_app.command("add")
    def nic_add(vm_id: str, network_id: str, ip: str = typer.Option(None, help="default: the lowest free"),
                wait: bool = True) -> None:
        c = client()
        follow(c, api(lambda: c.call("POST", f"/v1/vms/{vm_id}/nics", json=parse_nic(
            network_id + (f"={ip}" if ip else "")))), wait)

    @nic_app.command("remove")
    def nic_remove(vm_id: str, port_id: str, wait: bool = True) -> None:
        c = client()
        follow(c, api(lambda: c.call("DELETE", f"/v1/vms/{vm_id}/nics/{port_id}")), wait)

    @nic_app.command("list")
    def nic_list(vm_id: str) -> None:
        table = Table("id", "network", "mac", "ip", "attached")
        for nic in api(lambda: client().call("GET", f"/v1/vms/{vm_id}/nics")):
            table.add_row(nic["id"], nic["network_name"], nic["mac"], nic["ip"], "yes" if nic["attached"] else "no")
        console.print(table)
