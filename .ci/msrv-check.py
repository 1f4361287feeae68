#!/usr/bin/env python3
"""Every package in the lockfile that id6-tower's normal dependencies reach (any feature)
declares a rust-version no newer than ours. Offline: reads `cargo metadata` from the local
registry; no toolchain other than the installed one is needed."""
import json
import subprocess
import sys


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


host = next(
    line.split(": ", 1)[1]
    for line in subprocess.check_output(["rustc", "-vV"], text=True).splitlines()
    if line.startswith("host: ")
)
meta = json.loads(
    subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked",
         "--offline", "--filter-platform", host]
    )
)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root = next(p for p in meta["packages"] if p["name"] == "id6-tower" and p["source"] is None)
ours = version(root["rust_version"])

# Normal and build dependencies only: dev-dependencies never reach a user's build.
seen, stack = set(), [root["id"]]
while stack:
    current = stack.pop()
    for dep in nodes[current]["deps"]:
        kinds = {k["kind"] for k in dep["dep_kinds"]}
        if kinds - {"dev"} and dep["pkg"] not in seen:
            seen.add(dep["pkg"])
            stack.append(dep["pkg"])

too_new = sorted(
    f'{packages[p]["name"]} {packages[p]["version"]} needs Rust {packages[p]["rust_version"]}'
    for p in seen
    if packages[p].get("rust_version") and version(packages[p]["rust_version"]) > ours
)
if too_new:
    print(f"the lockfile breaks rust-version {root['rust_version']}:")
    print("\n".join("  " + line for line in too_new))
    print("fix: cargo update (resolver 3 in Cargo.toml keeps within the MSRV)")
    sys.exit(1)
print(f"{len(seen)} packages reachable from normal dependencies: all within Rust {root['rust_version']}")
