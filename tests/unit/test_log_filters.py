"""portwatch/log_filters.py: a library's repeated failure (a Kafka client while the broker
is down) reads as a line now and then with a count, never a flood; its tracebacks are one
line; portwatch's own records pass untouched."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatch import log_filters
from portwatch.log_filters import OneLine, RepeatLimiter, SecretsOut


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Handler, Clock]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    clock = Clock()
    handler.addFilter(RepeatLimiter(window=60, clock=clock))
    handler.addFilter(OneLine())
    loggers = [logging.getLogger(n) for n in ("aiokafka.conn", "portwatch.x")]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
        lg.setLevel(logging.DEBUG)
    yield out, handler, clock
    for lg in loggers:
        lg.removeHandler(handler)
        lg.propagate = True


def test_a_librarys_repeated_failure_is_one_line_a_window_with_a_count(
        captured: tuple[io.StringIO, logging.Handler, Clock]) -> None:
    out, _, clock = captured
    kafka = logging.getLogger("aiokafka.conn")
    # Given a client failing 1,000 times in 30 s, then once more a minute after the first
    for n in range(1000):
        clock.now = 1000.0 + n * 0.03
        kafka.error("Unable connect to node with id %s: %s", 1, "[Errno 111] refused")
    clock.now = 1061.0
    kafka.error("Unable connect to node with id %s: %s", 1, "[Errno 111] refused")
    # Then two lines were written: the first, and the next with what was held back
    assert out.getvalue().splitlines() == [
        "aiokafka.conn: Unable connect to node with id 1: [Errno 111] refused",
        "aiokafka.conn: Unable connect to node with id 1: [Errno 111] refused "
        "(and 999 more like it since 60s before)"]


def test_our_own_records_pass_untouched(
        captured: tuple[io.StringIO, logging.Handler, Clock]) -> None:
    out, _, _ = captured
    ours = logging.getLogger("portwatch.x")
    for _ in range(3):
        ours.warning("publishing to %s failed; retrying", "t")
    assert out.getvalue().splitlines() == ["portwatch.x: publishing to t failed; retrying"] * 3


def test_a_librarys_traceback_is_one_line(
        captured: tuple[io.StringIO, logging.Handler, Clock]) -> None:
    out, _, _ = captured
    try:
        raise ConnectionResetError(104, "Connection reset by peer\nsecond line")
    except ConnectionResetError:
        logging.getLogger("aiokafka.conn").exception("Error receiving network data")
    assert out.getvalue().splitlines() == [
        "aiokafka.conn: Error receiving network data (ConnectionResetError: [Errno 104] "
        "Connection reset by peer)"]


def test_a_malformed_record_never_breaks_the_log_call(
        captured: tuple[io.StringIO, logging.Handler, Clock]) -> None:
    out, handler, _ = captured
    record = logging.LogRecord("aiokafka.conn", logging.ERROR, __file__, 1, "%d of %s",
                               ("x",), (ValueError, ValueError("v"), None))
    assert all(f.filter(record) if isinstance(f, logging.Filter) else True
               for f in handler.filters)


def test_a_library_thread_that_dies_is_one_line(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # put back after
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logging.getLogger("portwatch").addHandler(handler)
    try:
        log_filters.install(verbose=False)

        def die() -> None:
            raise TimeoutError("stopping the consumer\nmore")

        worker = threading.Thread(target=die, name="aiokafka-consumer")
        worker.start()
        worker.join()
    finally:
        logging.getLogger("portwatch").removeHandler(handler)
    assert records == ["aiokafka-consumer ended on TimeoutError: stopping the consumer"]
    assert "Traceback" not in capsys.readouterr().err


def test_a_librarys_urls_and_request_paths_lose_their_tokens() -> None:
    # Given the lines apprise and urllib3 log at -vv when they post to a channel
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(SecretsOut())
    names = ("urllib3.connectionpool", "apprise", "portwatch.y")
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
        lg.setLevel(logging.DEBUG)
    try:
        logging.getLogger("urllib3.connectionpool").debug(
            '%s://%s:%s "%s %s %s" %s %s', "http", "127.0.0.1", 9, "POST",
            "/hooks/T00/B00/SUPERSECRET123?token=abc", "HTTP/1.1", 200, 2)
        logging.getLogger("apprise").debug("JSON POST URL: %s",
                                           "json://127.0.0.1:9/hooks/T00/SUPERSECRET123")
        logging.getLogger("portwatch.y").debug("ours: %s", "http://127.0.0.1/kept/as/is")
        logging.getLogger("apprise").debug(
            "Socket Exception: %s", "HTTPConnectionPool(host='127.0.0.1', port=9): Max "
            "retries exceeded with url: /services/T00/B00/SUPERSECRET123 (Caused by x)")
        # apprise's ntfy plugin prints its request headers (review of 2026-12-05)
        logging.getLogger("apprise").debug(
            "ntfy Headers: %s", {"User-Agent": "Apprise",
                                 "Authorization": "Bearer tk_SUPERSECRET123"})
        logging.getLogger("apprise").debug("login token=SUPERSECRET123&user=x "
                                           "password: SUPERSECRET123")
        try:
            raise ConnectionError("refused: http://127.0.0.1:9/hooks/SUPERSECRET123")
        except ConnectionError:
            logging.getLogger("apprise").exception("send failed")
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
            lg.propagate = True
    # Then the path (the token) is cut from the libraries' lines; ours are as written
    assert out.getvalue().splitlines()[:7] == [
        'urllib3.connectionpool: http://127.0.0.1:9 "POST /… HTTP/1.1" 200 2',
        "apprise: JSON POST URL: json://127.0.0.1:9/…",
        "portwatch.y: ours: http://127.0.0.1/kept/as/is",
        "apprise: Socket Exception: HTTPConnectionPool(host='127.0.0.1', port=9): Max "
        "retries exceeded with url: /… (Caused by x)",
        "apprise: ntfy Headers: {'User-Agent': 'Apprise', 'Authorization': 'Bearer …'}",
        "apprise: login token=…&user=x password: …",
        "apprise: send failed"]
    # (the traceback too: its last line names the URL, cut)
    assert "SUPERSECRET123" not in out.getvalue()
    assert "ConnectionError: refused: http://127.0.0.1:9/…" in out.getvalue()


@given(scheme=st.sampled_from(["Bearer ", "Basic ", "token ", ""]),
       name=st.sampled_from(["Authorization", "authorization", "X-Api-Key", "token",
                             "password", "access_token", "secret"]),
       sep=st.sampled_from([": ", "=", "': '", '": "']),
       secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEF0123456789_-.~+/",
                      min_size=8, max_size=64),
       around=st.text(alphabet="abc xyz,;{}()", max_size=30))
def test_a_credential_in_a_librarys_line_never_survives_masking(
        scheme: str, name: str, sep: str, secret: str, around: str) -> None:
    from portwatch.log_filters import _masked

    # (the name as a word, as headers, dict reprs and query strings print it)
    masked = _masked(f"{around} {name}{sep}{scheme}{secret} {around}")
    assert secret not in masked


def test_a_librarys_known_noise_is_dropped_and_nothing_else() -> None:
    from portwatch.log_filters import KnownNoise

    def record(name: str, message: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, message, (), None)

    noise = KnownNoise()
    # kafka-python's warning at every discover start, with the topics in place: dropped
    assert not noise.filter(record("kafka.cluster",
                                   "No partition metadata for topic pw-portwatch.shards"))
    # the same words from us, or another warning of the library's, pass
    assert noise.filter(record("portwatch.x", "No partition metadata for topic t"))
    assert noise.filter(record("kafka.conn", "Unable connect to node with id 1"))


def test_a_librarys_retried_error_reads_as_a_warning_that_says_so() -> None:
    import aiokafka.errors

    from portwatch.log_filters import Retried

    def record(name: str, level: int, message: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, message, args, None)

    retried = Retried()
    # aiokafka's ERROR while a new broker has no group coordinator yet (it retries)
    first = record("aiokafka.consumer.group_coordinator", logging.ERROR,
                   "Group Coordinator Request failed: %s",
                   aiokafka.errors.CoordinatorNotAvailableError())
    assert retried.filter(first)
    assert (first.levelno, first.levelname, first.getMessage()) == (
        logging.WARNING, "WARNING", "Group Coordinator Request failed: [Error 15] "
        "GroupCoordinatorNotAvailableError (retried: the broker has no coordinator for the "
        "consumer group yet)")
    # another of its errors, the same words from us, or at another level: untouched
    for name, level, error in [
            ("aiokafka.consumer.group_coordinator", logging.ERROR,
             aiokafka.errors.GroupAuthorizationFailedError()),
            ("portwatch.x", logging.ERROR, aiokafka.errors.CoordinatorNotAvailableError()),
            ("aiokafka.consumer.group_coordinator", logging.CRITICAL,
             aiokafka.errors.CoordinatorNotAvailableError())]:
        other = record(name, level, "Group Coordinator Request failed: %s", error)
        assert retried.filter(other)
        assert (other.levelno, other.getMessage()) == (
            level, f"Group Coordinator Request failed: {error}")


@pytest.fixture
def no_url_pieces() -> Iterator[None]:
    """The process's secret URL pieces emptied for the test, and put back after (they are
    kept as channels load: another test's must not decide this one's)."""
    from portwatch import log_filters

    saved = set(log_filters._URL_PIECES)
    log_filters._URL_PIECES.clear()
    try:
        yield
    finally:
        log_filters._URL_PIECES.clear()
        log_filters._URL_PIECES.update(saved)


def test_a_channel_urls_pieces_are_cut_wherever_a_library_quotes_them(
        no_url_pieces: None) -> None:
    from portwatch.log_filters import SecretsOut, keep_url_pieces_secret, mask_pieces

    # Given an ntfy channel loaded (its topic is its password) and a webhook's token
    keep_url_pieces_secret("ntfy://127.0.0.1:8080/topicSECRET7?mode=private")
    keep_url_pieces_secret("https://127.0.0.1/hooks/T0/B0/XXXXtokenXXXX?sig=abcdef123")
    # When apprise quotes them outside any URL, at -vv or in its error
    record = logging.LogRecord("apprise", logging.DEBUG, __file__, 1,
                               "ntfy Payload: %s", ({"topic": "topicSECRET7"},), None)
    assert SecretsOut().filter(record)
    # Then they read "…" (it said "Failed to send ntfy notification to topic
    # 'topicSECRET7'" in errors and logs: a review); short pieces and words stay
    assert record.getMessage() == "ntfy Payload: {'topic': '…'}"
    assert mask_pieces("token XXXXtokenXXXX, sig abcdef123, priority high, T0 B0 hooks") == (
        "token …, sig …, priority high, T0 B0 hooks")
    # And only the sending libraries' records are searched for them: a webhook's
    # /hooks/portwatch does not cut "portwatch" out of Kafka's lines
    keep_url_pieces_secret("https://soc.example/hooks/portwatch")  # (as an apprise URL)
    kafka = logging.LogRecord("aiokafka.consumer", logging.WARNING, __file__, 1,
                              "group portwatch-process rebalanced", (), None)
    assert SecretsOut().filter(kafka) and kafka.getMessage() == (
        "group portwatch-process rebalanced")


def test_an_apprise_urls_path_words_are_secret_a_webhooks_route_words_are_not(
        no_url_pieces: None) -> None:
    from portwatch.log_filters import keep_url_pieces_secret, mask_pieces

    # Given an apprise URL whose path is a lower-case topic, and a webhook's route
    keep_url_pieces_secret("ntfy://ntfy-server/mysecrettopic")
    keep_url_pieces_secret("https://alerts.example:8080/hooks/portwatch", words_too=False)
    # Then the topic is cut wherever quoted (a lower-case topic leaked: a review); the
    # hosts and the webhook's route words are not (over-masking hid the receiver's name)
    assert mask_pieces("topic 'mysecrettopic' on ntfy-server, alerts.example, hooks "
                       "portwatch") == ("topic '…' on ntfy-server, alerts.example, hooks "
                                        "portwatch")


def test_a_short_topic_is_cut_where_it_stands_alone(no_url_pieces: None) -> None:
    from portwatch.log_filters import keep_secret, mask_pieces

    # Given topics apprise reads from channel URLs, however short ("ops", "t1")
    keep_secret("ops", any_length=True)
    keep_secret("t1", any_length=True)
    # Then each is cut where it is quoted as a word (topics under 6 characters leaked:
    # a review), never out of another word or a host
    assert mask_pieces("topic 'ops' and t1: Oops, ops2, t10, ntfys://ops/…") == (
        "topic '…' and …: Oops, ops2, t10, ntfys://…/…")
