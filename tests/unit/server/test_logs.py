"""server.logs: what reaches the operator's log."""

from __future__ import annotations


def test_a_reply_to_a_call_that_just_ended_is_not_an_error_line():
    """grpc's ExecuteBatchError for a reply racing the client's deadline: DEBUG, no traceback."""
    import logging

    from server.logs import CallEndedFilter

    logger = logging.getLogger("grpc._cython.cygrpc.test")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1,
                               "ExecuteBatchError raised in core by servicer method [%s]",
                               ("/inference.GRPCInferenceService/ModelInfer",), None)
    logger.setLevel(logging.INFO)
    assert CallEndedFilter().filter(record) is False  # not shown at INFO
    assert record.levelname == "DEBUG" and record.exc_info is None
    other = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "Unexpected [%s]",
                              ("x",), None)
    assert CallEndedFilter().filter(other) is True and other.levelname == "ERROR"
