"""The bounded flow of a fetch: tunes go from the listing (or the ids asked), as its
pages arrive, to a fixed number of workers, each loading one tune from the API and
archiving it. What a run holds at once depends neither on how many tunes it takes up
nor on how many files they have (only on --concurrency): a run of 20,000 tunes opens
no more files, and holds no more tasks, than one of 50.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from tune_archiver.astria.client import AstriaClient
from tune_archiver.commands.choose import load_tune, unexpected
from tune_archiver.errors import (
    ArchiverError,
    AuthError,
    ConfigError,
    ConnectError,
    ReadTimeout,
    TuneElsewhere,
    TuneNotFound,
)
from tune_archiver.models import Prompt, Tune, TuneResult
from tune_archiver.progress import Progress

Finish = Callable[[TuneResult], None]


async def run_flow(
    source: AsyncIterator[list[int | TuneResult]],
    work: Callable[[int], Awaitable[None]],
    workers: int,
    finish: Finish,
    progress: Progress,
) -> list[int]:
    """Hand each tune id of `source` to one of `workers` running `work`, a few queued
    at most; finish each result `source` gives (a skipped tune) at once. Returns every
    tune id taken up, in the order `source` gave them.

    The first error of a worker, or of `source` before it gave any tune, stops the
    flow (the others are cancelled) and is raised as it is, a rejected key before any
    other. One of `source` after it gave tunes (a listing that breaks off on a later
    page) lets the tunes taken up finish, then is raised as BrokeOff with them.
    """
    order: list[int] = []
    queue: asyncio.Queue[int | None] = asyncio.Queue(maxsize=workers)
    broke: ArchiverError | None = None

    async def worker() -> None:
        while (tune_id := await queue.get()) is not None:
            await work(tune_id)

    failed: BaseException | None = None
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(workers):
                group.create_task(worker())
            try:
                async for batch in source:
                    progress.add_tunes(len(batch))
                    for item in batch:
                        if isinstance(item, TuneResult):
                            order.append(item.tune_id)
                            finish(item)
                        else:
                            order.append(item)
                            await queue.put(item)
            except (ConfigError, AuthError):
                raise
            except ArchiverError as exc:
                if not order:
                    raise
                broke = exc  # what was taken up is archived still, and said
            for _ in range(workers):
                await queue.put(None)
    except BaseExceptionGroup as errors:
        failed = first_error(errors)
    if failed is not None:
        raise failed  # out here: its own cause and context kept, not the group's
    if broke is not None:
        raise BrokeOff(broke, order) from broke
    return order


class BrokeOff(Exception):
    """The source failed after giving tunes, which were all seen through: `order`."""

    def __init__(self, error: ArchiverError, order: list[int]) -> None:
        super().__init__(str(error))
        self.error = error
        self.order = order


def first_error(errors: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to raise for a group: a rejected key (one is enough to say), else the first."""
    found = _leaves(errors)
    return next((e for e in found if isinstance(e, ConfigError | AuthError)), found[0])


def _leaves(errors: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [leaf for error in errors.exceptions
            for leaf in (_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])]


Kept = Callable[[int, TuneNotFound], Awaitable[Tune | None]]  # fetch's, of a journal


def not_found_head(tune_id: int, exc: TuneNotFound) -> str:
    """How the line of a tune the API did not find, recorded from its journal, begins:
    one another workspace holds is said to be there, not deleted."""
    return f"{exc};" if isinstance(exc, TuneElsewhere) else (
        f"tune {tune_id} not found (deleted upstream?):")


class Loader:
    """Each tune from the API (with its prompts when asked), for the flow's workers.

    With prompts, the account's prompts (GET /prompts) are listed once, by the first
    tune loaded, and shared: each tune takes those that name it. If they cannot be
    listed, every tune says so and is not complete (its other files are archived).
    A tune the API could not be reached for is held back, unsaid, until some tune
    is reached: when none is, close() raises the first such error (nothing can be
    done: exit 4), as if no tune had been tried.
    """

    def __init__(self, api: AstriaClient, prompts: bool, finish: Finish,
                 kept: Kept | None = None) -> None:
        self._api = api
        self._kept = kept  # a tune the API does not find, as a stopped run kept it
        self._prompts = prompts
        self._finish = finish
        self._lock = asyncio.Lock()
        self._account: Sequence[Prompt] | None = None
        self._account_error: str | None = None
        self._reached = False
        self._held: list[tuple[TuneResult, ConnectError | ReadTimeout]] = []

    async def load(self, tune_id: int) -> Tune | None:
        """The tune; None once its result, saying why not, is finished (or held back).

        Raises ConfigError and AuthError (a rejected key).
        """
        account = await self._account_prompts()
        try:
            tune = await load_tune(self._api, tune_id, self._prompts, account,
                                   self._account_error)
        except (ConfigError, AuthError):
            raise
        except (ConnectError, ReadTimeout) as exc:
            self._failed(TuneResult(tune_id, error=str(exc)), exc)
            return None
        except TuneNotFound as exc:
            kept = await self._kept(tune_id, exc) if self._kept is not None else None
            if kept is None:
                self._failed(TuneResult(tune_id, error=str(exc)))
            else:
                self._reach()
            return kept
        except ArchiverError as exc:
            self._failed(TuneResult(tune_id, error=str(exc)))
            return None
        except Exception as exc:  # a bug met on one tune must not stop the others
            self._failed(TuneResult(tune_id, error=unexpected(exc, f"reading tune {tune_id}")))
            return None
        self._reach()
        return tune

    def close(self, keep: Callable[[TuneResult], object] | None = None) -> None:
        """Raise the first failure to reach the API when no tune was reached at all,
        once `keep` has each result held back: the run's one line says the error, and
        --json and the fail ping name the tunes it stopped."""
        if self._held:
            for result, _ in self._held:
                if keep is not None:
                    keep(result)
            raise self._held[0][1]

    async def _account_prompts(self) -> Sequence[Prompt]:
        if not self._prompts:
            return ()
        async with self._lock:
            if self._account is None and self._account_error is None:
                try:
                    self._account = await self._api.list_prompts()
                except (ConfigError, AuthError):
                    raise
                # Out of reach too (a slow page past --read-timeout): the tunes' own
                # requests tell whether the API is (exit 4 when none is reached).
                except ArchiverError as exc:
                    self._account_error = str(exc)
        return self._account or ()

    def _failed(self, result: TuneResult,
                unreachable: ConnectError | ReadTimeout | None = None) -> None:
        if unreachable is not None and not self._reached:
            self._held.append((result, unreachable))
            return
        if unreachable is None:
            self._reach()
        self._finish(result)

    def _reach(self) -> None:
        if not self._reached:
            self._reached = True
            held, self._held = self._held, []
            for result, _ in held:
                self._finish(result)
