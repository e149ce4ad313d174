"""Progress fan-out, the terminal output and the resource-status shape."""

import io

from kmeans_partition.runner.progress import Progress, TerminalSink


class Broken:
    def on_progress(self, snap, event):
        raise RuntimeError("status API down")

    def on_result(self, result):
        raise RuntimeError("status API down")

    def close(self):
        pass


def run_through(progress):
    progress.stage("reading", files_total=2)
    progress.file_read(10)
    progress.file_read(5)
    progress.stage("fitting", max_iter=3)
    progress.iteration(1, 12.5, 0.25, rows_computed=0.4)
    progress.stage("assigning", partitions_total=2)
    progress.partition_assigned()
    progress.stage("writing", centroids_total=2)
    progress.centroids_written(2, 15)
    progress.result({"n_rows": 15, "n_clusters": 2, "output_path": "out", "n_iter": 1, "converged": True,
                     "inertia": 12.5, "rows_per_centroid": [10, 5], "timings": {"read": 0.5, "fit": 1.0}})


def test_terminal_summary_and_a_broken_sink_never_fails_the_job():
    stream = io.StringIO()
    progress = Progress(sinks=[Broken(), TerminalSink(stream=stream)])
    run_through(progress)
    progress.close()
    text = stream.getvalue()
    assert "done: 15 rows -> 2 centroids in out" in text
    assert "rows per centroid: min 5, max 10, empty 0" in text
    assert "read 0.50, fit 1.00" in text


def test_iteration_reports_the_fraction_of_rows_computed_on_the_terminal():
    stream = io.StringIO()
    progress = Progress(sinks=[TerminalSink(stream=stream)])
    progress.stage("fitting", max_iter=3)
    progress.iteration(1, 12.5, 0.25, rows_computed=0.4)
    assert progress.snapshot.rows_computed == 0.4
    assert "rowsComputed" not in progress.snapshot.to_status()  # terminal only, not in the CRD status
    progress.close()
    assert "computed=40%" in stream.getvalue()


def test_snapshot_to_status_uses_camel_case_and_drops_unknowns():
    progress = Progress()
    assert progress.snapshot.to_status() == {"stage": "pending", "iteration": 0, "maxIter": 0,
                                             "rowsRead": 0, "rowsWritten": 0}
    run_through(progress)
    status = progress.snapshot.to_status()
    assert status["stage"] == "done" and status["inertia"] == 12.5 and status["centroidShift"] == 0.25
    assert status["rowsRead"] == 15 and status["rowsWritten"] == 15 and status["maxIter"] == 3
