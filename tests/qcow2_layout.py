# SPDX-License-Identifier: MIT OR Apache-2.0
"""The qcow2 header's fields, for the test helpers that read and patch
images (tests/bad/make_bad.py, tests/interop/qtest.py): name -> (byte offset,
struct format, big-endian)."""

HEADER = {
    "magic": (0, ">I"),
    "version": (4, ">I"),
    "backing_file_offset": (8, ">Q"),
    "backing_file_size": (16, ">I"),
    "cluster_bits": (20, ">I"),
    "size": (24, ">Q"),
    "crypt_method": (32, ">I"),
    "l1_size": (36, ">I"),
    "l1_table_offset": (40, ">Q"),
    "refcount_table_offset": (48, ">Q"),
    "refcount_table_clusters": (56, ">I"),
    "nb_snapshots": (60, ">I"),
    "snapshots_offset": (64, ">Q"),
    "incompatible_features": (72, ">Q"),
    "compatible_features": (80, ">Q"),
    "autoclear_features": (88, ">Q"),
    "refcount_order": (96, ">I"),
    "header_length": (100, ">I"),
    "compression_type": (104, ">B"),
}
