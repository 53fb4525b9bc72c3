from dataclasses import dataclass

from realchat.curation.sources.base import ReadReport


@dataclass
class ExecutorRun:
    rules: list[dict]
    read: int
    renamed: int
    report: ReadReport
