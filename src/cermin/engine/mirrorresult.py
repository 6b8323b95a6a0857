"""What a mirror run is asked to do (`MirrorOptions`) and what it did (`MirrorResult`, rendered as text
and JSON lines). The run itself is engine/mirror.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from cermin.engine.results import Line, answer, note, warning, warning_json
from cermin.util import fmt_bytes, plural

EXIT_INCOMPLETE = 3  # as backup's: the run finished, but some snapshots could not be copied


@dataclass
class MirrorOptions:
    hosts: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    paths: tuple[bytes, ...] = ()
    snapshot_ids: list[str] = field(default_factory=list)  # explicit selection (ids, prefixes, 'latest')
    dry_run: bool = False
    # copy the source's evidence that can lower a verdict (acks, scans without an alarm): off, since
    # whoever holds the source's password could write such records to clear flagged copies in B
    copy_acks: bool = False


@dataclass
class MirrorResult:
    source: str  # A's location, credentials stripped
    source_id: str
    target: str
    target_id: str
    same_ids: bool  # B shares A's blob-id key: blobs and trees copied as they are
    selected: int = 0  # snapshots of A selected
    present: int = 0  # of those, already in B
    copied: list[tuple[str, str]] = field(default_factory=list)  # (A snapshot id, B snapshot id)
    to_copy: list[str] = field(default_factory=list)  # dry run: A snapshot ids that would be copied
    skipped: dict[str, str] = field(default_factory=dict)  # A snapshot id -> why it was not copied
    blobs_copied: int = 0
    bytes_copied: int = 0  # plaintext bytes of the blobs B received (dry run: would receive)
    packs_written: int = 0
    bytes_uploaded: int = 0
    adopted_packs: int = 0
    damaged_in_target: list[str] = field(default_factory=list)  # "kind/name" stored damaged in B, not used
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    # guard evidence (aux records of the source)
    copy_acks: bool = False
    evidence_copied: dict[str, int] = field(default_factory=dict)  # type -> records copied (dry run: would be)
    evidence_present: int = 0  # already in the target
    evidence_waiting: int = 0  # naming a snapshot the target has no copy of (yet)
    evidence_withheld: int = 0  # acks and clearing scans not copied: no copy_acks
    marks_withheld: int = 0  # marks that would close an alarm the target opened itself
    evidence_rejected: int = 0  # unreadable, foreign, future-dated or malformed: never copied
    evidence_rejected_sample: dict[str, str] = field(default_factory=dict)  # aux name -> why (the first few)

    @property
    def exit_code(self) -> int:
        return EXIT_INCOMPLETE if self.skipped else 0

    @property
    def evidence_total(self) -> int:
        return sum(self.evidence_copied.values())

    def _notes(self) -> list[str]:
        out = list(self.warnings)
        if not self.same_ids:
            out.append(
                "the target names blobs with its own key (not made with `init --copy-chunker-params-from`): "
                "files are re-chunked and trees rewritten; slower, and no deduplication with the source's ids"
            )
        out += [f"snapshot {sid[:8]} of the source not copied: {why}" for sid, why in sorted(self.skipped.items())]
        if self.evidence_rejected:
            sample = ", ".join(f"{n[:12]}: {why}" for n, why in sorted(self.evidence_rejected_sample.items())[:3])
            out.append(
                f"{plural(self.evidence_rejected, 'aux record')} of the source unreadable or not valid guard "
                f"evidence, not copied ({sample}{', ...' if self.evidence_rejected > 3 else ''})"
            )
        if self.marks_withheld:
            out.append(
                f"{plural(self.marks_withheld, 'guard mark')} of the source not copied: each would close an alarm "
                "the target opened itself (close it in the target: `cermin -r TARGET guard mark --from ... --to ...`)"
            )
        if self.damaged_in_target:
            out.append(
                f"target: {plural(len(self.damaged_in_target), 'object')} stored damaged and not used "
                f"({', '.join(n.split('/')[0] + '/' + n.split('/')[1][:12] for n in self.damaged_in_target)}): "
                "their content was stored again; `cermin check` names them, `prune` removes them"
            )
        return out

    def to_json(self) -> list[dict]:
        out = [*map(warning_json, self._notes())]
        out.append(
            {
                "message_type": "mirror_summary",
                "dry_run": self.dry_run,
                "source": self.source,
                "source_id": self.source_id,
                "target": self.target,
                "target_id": self.target_id,
                "same_ids": self.same_ids,
                "snapshots_selected": self.selected,
                "snapshots_present": self.present,
                "snapshots_copied": len(self.copied),
                "snapshots_to_copy": self.to_copy if self.dry_run else [a for a, _ in self.copied],
                "copied": [{"source": a, "target": b} for a, b in self.copied],
                "skipped": self.skipped,
                "blobs_copied": self.blobs_copied,
                "bytes_copied": self.bytes_copied,
                "packs_written": self.packs_written,
                "bytes_uploaded": self.bytes_uploaded,
                "adopted_packs": self.adopted_packs,
                "damaged_in_target": self.damaged_in_target,
                "copy_acks": self.copy_acks,
                "evidence_copied": self.evidence_copied,
                "evidence_present": self.evidence_present,
                "evidence_waiting": self.evidence_waiting,
                "evidence_withheld": self.evidence_withheld,
                "marks_withheld": self.marks_withheld,
                "evidence_rejected": self.evidence_rejected,
                "evidence_rejected_sample": self.evidence_rejected_sample,
            }
        )
        return out

    def _evidence_lines(self) -> list[Line]:
        lines = []
        n = self.evidence_total
        if n or self.evidence_present:
            kinds = ", ".join(f"{c} {t.removeprefix('guard_')}" for t, c in sorted(self.evidence_copied.items()) if c)
            verb = "would copy" if self.dry_run else "copied"
            lines.append(
                answer(
                    f"guard evidence: {verb} {plural(n, 'record')}{f' ({kinds})' if kinds else ''}, "
                    f"{self.evidence_present} already in the target"
                )
            )
        if self.evidence_withheld:
            lines.append(
                note(
                    f"{plural(self.evidence_withheld, 'acknowledgement')} (or scans reporting no alarm) of the source "
                    "not copied: the target keeps those snapshots flagged (`--copy-acks` trusts the source's, "
                    "`cermin -r TARGET guard ack` acknowledges in the target)"
                )
            )
        if self.evidence_waiting:
            lines.append(
                note(
                    f"{plural(self.evidence_waiting, 'guard record')} of the source name snapshots "
                    "the target has no copy of"
                )
            )
        return lines

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = [*map(warning, self._notes())]
        if self.dry_run:
            lines.append(answer("dry run: nothing is written"))
            lines.append(
                answer(
                    f"would copy {plural(len(self.to_copy), 'snapshot')} of {self.selected} selected "
                    f"({self.present} already in the target), about {fmt_bytes(self.bytes_copied)} of new data"
                )
            )
            lines += [note(f"  {sid[:8]}") for sid in self.to_copy] if verbose else []
            return lines + self._evidence_lines()
        if self.adopted_packs:
            lines.append(note(f"adopted {plural(self.adopted_packs, 'pack')} of an interrupted run"))
        for a, b in self.copied if verbose else []:
            lines.append(note(f"copied {a[:8]} -> {b[:8]}"))
        lines.append(
            answer(
                f"copied {plural(len(self.copied), 'snapshot')} of {self.selected} selected "
                f"({self.present} already in the target): {plural(self.blobs_copied, 'blob')}, "
                f"{fmt_bytes(self.bytes_copied)} new, {plural(self.packs_written, 'pack')} "
                f"({fmt_bytes(self.bytes_uploaded)}) written"
            )
        )
        return lines + self._evidence_lines()
