"""The embedded mode's broker: kombu's filesystem transport, safe for a consumer that polls.

kombu's filesystem Channel (5.7.0) creates a message file and then writes it, and its consumer
takes any file named `<stamp>_<uuid>.<queue>.msg` it lists, so a worker polling every 50 ms
can read a file its producer has not written yet: the worker dies with "Unrecoverable error:
JSONDecodeError" (kombu issue 1551, open). The same happens to an exchange's control file
(`<exchange>.exchange`), created empty and then written, when two workers start together.

Here a producer writes each message under a hidden name that no consumer lists
(`.<name>.tmp`) and renames it into place when it is complete, so a consumer sees the whole
message or nothing. A consumer claims a message by renaming it to a hidden name in the same
folder (atomic, unlike kombu's move to the temp directory, which copies when that is another
filesystem). A message file that still cannot be read (left by an older version, a crash or
a full disk) is moved to `broken/` in the queue folder with a warning, and the worker carries
on. The file names, the lock held while writing and the absence of fsync are kombu's.

kombu takes a transport from the URL's scheme and refuses a dotted path there, so this module
registers the scheme `adsync-filesystem` (settings: CELERY_BROKER_URL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

SCHEME = "adsync-filesystem"
# Where unreadable message files go, inside the queue folder. kombu lists that folder and
# skips this name (no "<queue>.msg" after its first dot), as it skips the hidden names below.
BROKEN_FOLDER = "broken"


def _hidden(filename: str, suffix: str) -> str:
    # kombu's _get, _size and _purge take a file only if the part after its first dot is
    # "<queue>.msg"; after a leading dot that part ends in `suffix`, so no queue matches it.
    return f".{filename}.{suffix}"


class Channel(filesystem.Channel):
    """kombu's filesystem Channel, with messages and exchange tables that appear complete."""

    # kombu's own filesystem.Channel._put (this one's parent) names AbstractChannel._put's "message"
    # "payload"; no signature matches both, and kombu passes both positionally.
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        """Put `payload` onto `queue`: write it under a hidden name, then rename it into place."""
        # kombu's name: consumers take messages in the order of these names.
        filename = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        path = os.path.join(self.data_folder_out, filename)
        temporary = os.path.join(self.data_folder_out, _hidden(filename, "tmp"))
        f = None
        try:
            f = open(temporary, "wb", buffering=0)  # noqa: SIM115 - closed in finally, as kombu does
            filesystem.lock(f, filesystem.LOCK_EX)
            f.write(str_to_bytes(dumps(payload)))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise ChannelError(f"Cannot add file {path!r} to directory") from exc
        finally:
            if f is not None:
                filesystem.unlock(f)
                f.close()
        try:
            os.replace(temporary, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise ChannelError(f"Cannot add file {path!r} to directory") from exc

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        """Get the next message from `queue`; unreadable files are moved aside, not raised.

        A polling transport: `timeout` (the virtual Channel's signature) is not waited for, as in
        kombu's filesystem Channel, which takes no timeout at all."""
        queue_find = f"{queue}.msg"
        folder = self.data_folder_in
        for filename in sorted(os.listdir(folder)):
            if filename.partition(".")[2] != queue_find:
                continue
            claimed = os.path.join(folder, _hidden(filename, "claimed"))
            try:
                os.rename(os.path.join(folder, filename), claimed)
            except OSError:
                continue  # another consumer took it
            try:
                with open(claimed, "rb") as f:
                    payload = loads(bytes_to_str(f.read()))
                if not isinstance(payload, dict):
                    raise ValueError(f"a message is a JSON object, not {type(payload).__name__}")
            except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                self._set_aside(claimed, filename, exc)
                continue
            self._done(claimed, filename)
            return payload
        raise Empty()

    def _done(self, claimed: str, filename: str) -> None:
        try:
            if self.store_processed:
                shutil.move(claimed, os.path.join(self.processed_folder, filename))
            else:
                os.remove(claimed)
        except OSError as exc:
            # The message is read: deliver it rather than lose it over its copy.
            logger.warning("Broker message %s read but not removed from the queue folder: %s", filename, exc)

    def _set_aside(self, claimed: str, filename: str, error: Exception) -> None:
        broken = os.path.join(self.data_folder_in, BROKEN_FOLDER)
        try:
            os.makedirs(broken, exist_ok=True)
            os.replace(claimed, os.path.join(broken, filename))
        except OSError as exc:
            logger.warning(
                "Skipped unreadable broker message %s (%s); could not move it aside: %s", filename, error, exc
            )
        else:
            logger.warning("Skipped unreadable broker message %s (%s); moved it to %s", filename, error, broken)

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        """Bind `queue` to `exchange` in its control file, which never appears empty.

        kombu creates a missing control file with open("wb") and only then locks and writes it:
        a second process binding at that moment reads "" and raises JSONDecodeError, or
        truncates the first one's binding away. Here a missing file appears with its first
        binding already in it (a hard link fails if someone else created it first); an existing
        one is updated in place under kombu's lock, by kombu's code.
        """
        file = self._exchange_file(exchange)
        if not file.exists():
            self.control_folder.mkdir(exist_ok=True)
            row = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
            temporary = file.with_name(_hidden(file.name, f"{uuid.uuid4()}.tmp"))
            try:
                temporary.write_bytes(str_to_bytes(dumps([row])))
                os.link(temporary, file)
                return
            except FileExistsError:
                pass  # created meanwhile: add to it below
            except OSError as exc:
                raise ChannelError(f"Cannot open {file}") from exc
            finally:
                with contextlib.suppress(OSError):
                    temporary.unlink()
        super()._queue_bind(exchange, routing_key, pattern, queue)


class Transport(filesystem.Transport):
    Channel = Channel


# kombu resolves a URL's scheme through this table (and refuses "module:Class" in a URL).
TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
