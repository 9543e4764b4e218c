#!/usr/bin/python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""check_metrics.py FILE IMAGE: FILE is qcow2d's service.metrics text taken
after IO on image IMAGE. It must parse with the strict OpenMetrics parser of
python3-prometheus-client, and its figures must hang together: every
request family has the five operations, a histogram's count equals the
requests counted, buckets are cumulative, and there was IO to count."""
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    path, image = sys.argv[1], sys.argv[2]
    text = open(path, encoding="utf-8").read()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    need = ["qcow2d_uptime_seconds", "qcow2d_images", "qcow2d_control_requests",
            "qcow2d_image_requests", "qcow2d_image_request_bytes",
            "qcow2d_image_request_duration_seconds", "qcow2d_image_writebacks",
            "qcow2d_image_writeback_duration_seconds", "qcow2d_image_fdatasyncs",
            "qcow2d_image_metadata_written_bytes", "qcow2d_image_cache_hits",
            "qcow2d_image_clients", "qcow2d_worker_loop_iterations"]
    missing = [n for n in need if n not in fams]
    if missing:
        sys.exit(f"missing families: {missing}")
    reqs = {}
    for s in fams["qcow2d_image_requests"].samples:
        if s.labels.get("image") == image:
            reqs[s.labels["op"]] = s.value
    if sorted(reqs) != sorted(["read", "write", "flush", "write_zeroes", "discard"]):
        sys.exit(f"operations counted: {sorted(reqs)}")
    if reqs["write"] <= 0 or reqs["read"] <= 0 or reqs["flush"] <= 0:
        sys.exit(f"no IO counted: {reqs}")
    hist = fams["qcow2d_image_request_duration_seconds"]
    for op, n in reqs.items():
        buckets = [s for s in hist.samples if s.name.endswith("_bucket")
                   and s.labels["image"] == image and s.labels["op"] == op]
        counts = [s.value for s in buckets]
        if counts != sorted(counts):
            sys.exit(f"{op}: buckets not cumulative: {counts}")
        count = [s.value for s in hist.samples if s.name.endswith("_count")
                 and s.labels["image"] == image and s.labels["op"] == op]
        if count != [n] or counts[-1] != n:
            sys.exit(f"{op}: histogram count {count}, +Inf {counts[-1]}, requests {n}")
    wb = sum(s.value for s in fams["qcow2d_image_writebacks"].samples
             if s.labels.get("image") == image)
    if wb <= 0:
        sys.exit("no metadata write-back counted")
    print(f"metrics ok: {len(fams)} families; {image}: {reqs}, {wb:.0f} write-backs")


if __name__ == "__main__":
    main()
