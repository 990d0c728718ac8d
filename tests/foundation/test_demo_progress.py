"""The demo's progress bars end in a state that reads right after a stop: a bar that can no
longer grow says why instead of promising a time remaining."""

from __future__ import annotations

from rich.progress import Progress

from streams.lab.demo import RemainingOrStateColumn


def test_a_stopped_bar_says_so_instead_of_an_eta() -> None:
    progress = Progress()
    sent = progress.add_task("sent", total=500_000)
    progress.update(sent, completed=50_000)
    column = RemainingOrStateColumn()
    task = progress.tasks[sent]
    assert column.render(task).plain != "campaign stopped"
    progress.update(sent, state="campaign stopped")
    assert column.render(progress.tasks[sent]).plain == "campaign stopped"


def test_a_finished_bar_says_done() -> None:
    progress = Progress()
    queued = progress.add_task("queued", total=10)
    progress.update(queued, completed=10)
    assert RemainingOrStateColumn().render(progress.tasks[queued]).plain == "done"
