"""cloud-init NoCloud seeds: the files (pure) and the ISO 9660 image labelled ``cidata`` that
carries them, as cloud-init's NoCloud datasource finds it on any real cloud image."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

from shared.errors import HypervisorError
from shared.guest import SeedSpec

SEED_LABEL = "cidata"
_MKISOFS_TIMEOUT_S = 30.0


def seed_files(seed: SeedSpec) -> dict[str, str]:
    """meta-data, user-data and network-config of the seed. meta-data is plain ``key: value``
    lines (what the simplest readers parse; the id and hostname are checked values), keys are
    YAML double-quoted scalars (JSON strings), so no character a user gave can change the shape."""
    meta = f"instance-id: {seed.instance_id}\nlocal-hostname: {seed.hostname}\n"
    if seed.ssh_authorized_keys:
        meta += "public-keys:\n" + "".join(f"  - {json.dumps(key)}\n" for key in seed.ssh_authorized_keys)
    if seed.user_data is not None:
        user_data = seed.user_data
    else:  # cloud-config of our own: the keys, so images that read only user-data get them too
        config = {"ssh_authorized_keys": list(seed.ssh_authorized_keys)} if seed.ssh_authorized_keys else {}
        user_data = "#cloud-config\n" + json.dumps(config, indent=2) + "\n"
    ethernets = {
        f"nic{index}": {"match": {"macaddress": mac}, "dhcp4": True} for index, mac in enumerate(seed.macs)
    }
    network = {"version": 2, "ethernets": ethernets}
    return {
        "meta-data": meta,
        "user-data": user_data,
        "network-config": json.dumps(network, indent=2) + "\n",
    }


def seed_digest(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()


def write_seed(path: Path, seed: SeedSpec) -> bool:
    """Write the seed image at ``path`` unless one with the same contents is there (a digest
    file beside it says). Atomic: a reader sees the old image or the new one. Returns whether it
    wrote. Blocking. Raises HypervisorError when the image cannot be made."""
    files = seed_files(seed)
    digest = seed_digest(files)
    digest_file = path.with_suffix(".sha256")
    if path.exists() and digest_file.exists() and digest_file.read_text().strip() == digest:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".seed-") as staging:
        content = Path(staging) / "content"
        content.mkdir()
        for name, text in files.items():
            (content / name).write_text(text)
        image = Path(staging) / "seed.iso"
        argv = ["genisoimage", "-quiet", "-output", str(image), "-volid", SEED_LABEL, "-joliet", "-rock",
                *(str(content / name) for name in sorted(files))]
        try:
            subprocess.run(argv, check=True, capture_output=True, timeout=_MKISOFS_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            stderr = getattr(exc, "stderr", b"") or b""
            raise HypervisorError(f"could not make the seed image: {exc} {stderr.decode(errors='replace')}") from exc
        os.replace(image, path)
    digest_file.write_text(digest + "\n")
    return True


def remove_seed(path: Path) -> None:
    """Idempotent."""
    path.unlink(missing_ok=True)
    path.with_suffix(".sha256").unlink(missing_ok=True)
