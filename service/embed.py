#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""embed.py IN OUT SYMBOL: write a C file defining SYMBOL as IN's text
(a JSON document checked here, so a broken one fails the build)."""
import json
import sys

src, out, sym = sys.argv[1:4]
text = open(src, encoding="utf-8").read()
json.loads(text)
with open(out, "w", encoding="utf-8") as f:
    f.write("/* generated from %s by service/embed.py */\n" % src.split("/")[-1])
    f.write("const char %s[] =\n" % sym)
    for line in text.splitlines():
        esc = line.replace("\\", "\\\\").replace('"', '\\"')
        f.write('\t"%s\\n"\n' % esc)
    f.write("\t;\n")
