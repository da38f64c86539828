"""Exports that finish: ``tagsync tags fans ID --out FILE`` pages ``user/tag/get`` into FILE
and keeps its place in ``FILE.cursor``, so an interrupted export resumes where it stood.

After each page the openids are written and synced first, then the cursor (the page's
``next_openid``, FILE's length, the count) replaces the cursor file atomically. A resumed
export cuts FILE back to the length the cursor holds (a page written after the last
cursor is written again, once) and asks for the page after ``next_openid``: no openid is
missing or repeated. The cursor file is removed when the export is complete.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from worker.admin.gated_client import GatedClient
from worker.admin.progress import Progress
from worker.base.settings import SettingsError
from worker.wechat.errors import WeChatError


@dataclass
class Cursor:
    """Where an export stands."""

    account: str
    tag_id: int
    next_openid: str = ""
    bytes: int = 0
    count: int = 0


class FansExport:
    """Exports one tag's fans into a file, resumably."""

    def __init__(
        self, client: GatedClient, tag_id: int, path: str, *, say: Callable[[str], None]
    ) -> None:
        self.client = client
        self.tag_id = tag_id
        self.path = Path(path)
        self.cursor_path = Path(f"{path}.cursor")
        self.say = say

    def _load(self) -> Cursor | None:
        if not self.cursor_path.exists():
            return None
        try:
            cursor = Cursor(**json.loads(self.cursor_path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{self.cursor_path}: not an export cursor ({exc})") from None
        if (cursor.account, cursor.tag_id) != (self.client.appid, self.tag_id):
            raise SettingsError(
                f"{self.cursor_path} belongs to an export of tag {cursor.tag_id} of account "
                f"{cursor.account}: finish that one, or remove the cursor file"
            )
        if not self.path.exists() or self.path.stat().st_size < cursor.bytes:
            raise SettingsError(f"{self.path} is shorter than its cursor says: remove both")
        return cursor

    def _save(self, cursor: Cursor) -> None:
        partial = self.cursor_path.with_name(self.cursor_path.name + ".tmp")
        with open(partial, "w", encoding="utf-8") as out:
            out.write(json.dumps(asdict(cursor)))
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, self.cursor_path)
        directory = os.open(self.cursor_path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power loss
        finally:
            os.close(directory)

    def run(self) -> int:
        """Export (or resume exporting) every fan; return how many the file holds."""
        cursor = self._load()
        if cursor is None:
            cursor = Cursor(self.client.appid, self.tag_id)
            self.path.write_bytes(b"")
            self._save(cursor)
        else:
            self.say(f"resuming the export of tag {self.tag_id} after {cursor.count} fans")
        out = open(self.path, "r+b")  # noqa: SIM115 (closed below)
        out.truncate(cursor.bytes)  # a page written after the last cursor goes again
        out.seek(cursor.bytes)
        progress = Progress(sys.stderr)
        try:
            while True:
                try:
                    page = self.client.tag_fans(self.tag_id, cursor.next_openid)
                except WeChatError as exc:
                    if exc.errcode == 40003 and cursor.next_openid:
                        raise SettingsError(
                            f"WeChat no longer knows the fan the export stopped after "
                            f"({exc}): remove {self.cursor_path} and {self.path} and export "
                            "again"
                        ) from None
                    raise
                if page.openids:
                    out.write("".join(o + "\n" for o in page.openids).encode())
                    out.flush()
                    os.fsync(out.fileno())
                    cursor.count += len(page.openids)
                    cursor.bytes = out.tell()
                done = (
                    not page.openids
                    or not page.next_openid
                    or page.next_openid == cursor.next_openid
                )
                cursor.next_openid = page.next_openid
                if done:
                    break
                self._save(cursor)
                progress.show(f"{cursor.count} fans of tag {self.tag_id} exported so far")
        finally:
            out.close()
            progress.done(f"{cursor.count} fans of tag {self.tag_id} in {self.path}")
        self.cursor_path.unlink(missing_ok=True)
        return cursor.count
