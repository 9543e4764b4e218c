#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Includes point downward only.

Inside libqcow2 the folders are layers, lowest first:
    format  io  cache  offline  engine
A file may include the public headers (qcow2/include), its own folder's
header and those of the folders below it: never one above (an import
circle between folders starts that way). Between the top-level folders:
qcow2/ includes only itself; ipc/ only itself; tools/ only its own files
and the public headers of qcow2/ and ipc/ (never a private one); service/
the public headers of qcow2/ and ipc/ (and ipc/'s private ones, whose
protocol it speaks); client/ ipc/. Prints every violation and the graph
of folder-level includes.

    layers.py SOURCE_ROOT
Exit 0 pass, 1 fail.
"""
import os
import re
import sys

LAYERS = ["format", "io", "cache", "offline", "engine"]
PUBLIC = {
    "qcow2": set(os.listdir(os.path.join(sys.argv[1], "qcow2", "include"))),
    "ipc": set(os.listdir(os.path.join(sys.argv[1], "ipc", "include"))),
}
# top-level folder -> folders whose private headers it may include
PRIVATE_OK = {"qcow2": {"qcow2"}, "ipc": {"ipc"}, "tools": {"tools"},
              "service": {"service", "ipc"}, "client": {"client", "ipc"}}
# top-level folder -> folders whose public headers it may include
PUBLIC_OK = {"qcow2": {"qcow2"}, "ipc": {"ipc"}, "tools": {"qcow2", "ipc", "client"},
             "service": {"qcow2", "ipc"}, "client": {"ipc"}}
INC = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def main():
    root = sys.argv[1]
    bad = []
    edges = set()
    private = {}  # header name -> top folder that has it beside its sources
    for top in PRIVATE_OK:
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            if os.path.basename(dirpath) == "include":
                continue
            for f in files:
                if f.endswith(".h"):
                    private.setdefault(f, top)
    for top in PRIVATE_OK:
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for f in files:
                if not f.endswith((".c", ".h")):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, root)
                parts = rel.split(os.sep)
                text = open(path, encoding="utf-8").read()
                for inc in INC.findall(text):
                    head = inc.split("/")[0]
                    if top == "qcow2" and "/" in inc:
                        if head not in LAYERS:
                            bad.append(f"{rel}: includes {inc}: no such layer")
                            continue
                        mine = parts[1]
                        if mine == "include":
                            bad.append(f"{rel}: a public header includes {inc}")
                            continue
                        edges.add((mine, head))
                        if LAYERS.index(head) > LAYERS.index(mine):
                            bad.append(f"{rel}: includes {inc}, a layer above {mine}/")
                        continue
                    name = os.path.basename(inc)
                    owner = next((t for t, hs in PUBLIC.items() if name in hs), None)
                    if owner:
                        if owner not in PUBLIC_OK[top]:
                            bad.append(f"{rel}: includes {owner}'s public {inc}")
                        continue
                    owner = private.get(name)
                    if owner and owner not in PRIVATE_OK[top]:
                        bad.append(f"{rel}: includes {owner}/'s private {inc}")
    print("qcow2/ folder includes (from -> to):")
    for a, b in sorted(edges, key=lambda e: (LAYERS.index(e[0]), LAYERS.index(e[1]))):
        if a != b:
            print(f"  {a} -> {b}")
    for b in bad:
        print("FAIL:", b)
    print("ok: includes point downward only" if not bad else f"{len(bad)} violations")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
