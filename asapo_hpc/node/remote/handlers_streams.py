"""Stream and metadata reads, and delete_stream: the local Consumer's catalog calls
(``asapo_hpc.client.streams``) made by the source's reader."""

from __future__ import annotations

from asapo_hpc.node.remote.context import Operations, reader_op

OPERATIONS: Operations = {
    "get_stream_list": ("read", reader_op(lambda c, r: c.get_stream_list(
        r.arg("from_stream", str, ""), r.arg("filter", str, "all")))),
    "get_current_size": ("read", reader_op(lambda c, r: c.get_current_size(
        r.stream(), r.arg("include_incomplete", bool, True)))),
    "query_messages": ("read", reader_op(lambda c, r: c.query_messages(
        r.arg("query", str), r.stream()))),
    "get_stream_info": ("read", reader_op(lambda c, r: c.get_stream_info(r.stream()))),
    "get_last_stream": ("read", reader_op(lambda c, r: c.get_last_stream())),
    "get_source_list": ("read", reader_op(lambda c, r: c.get_source_list())),
    "get_beamtime_meta": ("read", reader_op(lambda c, r: c.get_beamtime_meta())),
    "get_stream_meta": ("read", reader_op(lambda c, r: c.get_stream_meta(r.stream()))),
    # deleting destroys records: a write, from consumers too
    "delete_stream": ("write", reader_op(lambda c, r: c.delete_stream(
        r.stream(), r.arg("error_on_not_exist", bool, True),
        r.arg("delete_meta", bool, True)))),
}
