"""The load tools the benchmark drives, from the system's packages."""

import shutil
import subprocess
import sys


def find_or_install(command: str, debian_package: str) -> str:
    """The path of ``command``; installs its Debian package when it is missing and this
    process may (root with apt-get). Says what it used on stderr."""
    path = shutil.which(command)
    if path is None and shutil.which("apt-get"):
        print(f"bench: {command} not found; installing {debian_package}", file=sys.stderr)
        install = ["apt-get", "install", "-y", "--no-install-recommends", debian_package]
        if subprocess.run(install, check=False, capture_output=True).returncode != 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update"], check=False, capture_output=True)
            subprocess.run(install, check=False, capture_output=True)
        path = shutil.which(command)
    if path is None:
        sys.exit(f"bench: {command} is needed; install the {debian_package} package")
    version = subprocess.run([path, "--version"], capture_output=True, text=True)
    first_line = (version.stdout or version.stderr).strip().splitlines()[:1]
    print(
        f"bench: using {path} ({first_line[0] if first_line else 'unknown version'})",
        file=sys.stderr,
    )
    return path
