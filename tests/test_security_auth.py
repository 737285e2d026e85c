"""Sign-in and revocation: role changes reach open sessions, no lock-out by strangers, no enumeration by timing."""

from __future__ import annotations

import math
import statistics
import time

import pytest

pytest.importorskip("gradio_client")

from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from app_fixtures import running_app

    users = {"anna": (PASSWORD, "annotator"), "rita": (PASSWORD, "researcher"), "remy": (PASSWORD, "researcher")}
    with running_app(tmp_path_factory.mktemp("auth-data"), users=users) as running:
        yield running


def _signed_in(app, name: str) -> Client:
    client = Client(app.url, verbose=False, download_files=False)
    client.predict(name, PASSWORD, api_name="/sign_in")
    return client


def test_a_demoted_researcher_loses_research_on_the_next_call(app):
    from annotation.store.users import set_role

    rita = _signed_in(app, "rita")
    assert "votes" in rita.predict(api_name="/research_refresh")[0]
    with app.services.auth.sessions() as session:
        set_role(session, "rita", "annotator")
    with pytest.raises(AppError, match=r"rita \(annotator\) may not .*needs researcher"):
        rita.predict(api_name="/research_refresh")
    with app.services.auth.sessions() as session:
        set_role(session, "rita", "researcher")
    assert "votes" in rita.predict(api_name="/research_refresh")[0]


def test_a_deactivated_user_is_signed_out_on_the_next_call(app):
    from annotation.store.users import set_active

    anna = _signed_in(app, "anna")
    anna.predict(api_name="/annotate_show")
    with app.services.auth.sessions() as session:
        set_active(session, "anna", False)
    try:
        with pytest.raises(AppError, match="sign in as annotator"):
            anna.predict(api_name="/annotate_show")
        with pytest.raises(AppError, match="wrong user name or password"):
            anna.predict("anna", PASSWORD, api_name="/sign_in")
    finally:
        with app.services.auth.sessions() as session:
            set_active(session, "anna", True)
    with pytest.raises(AppError, match="sign in as annotator"):
        anna.predict(api_name="/annotate_show")  # reactivation does not revive the dropped token


def test_a_stranger_cannot_lock_a_researcher_out(app):
    import secrets

    stranger = Client(app.url, verbose=False, download_files=False)
    for _ in range(7):  # more than the old limit of 5 failures in 5 minutes
        with pytest.raises(AppError, match="wrong user name or password|try again in"):
            stranger.predict("remy", "guess-guess-guess", api_name="/sign_in")
    start = time.monotonic()
    remy = Client(app.url, verbose=False, download_files=False,
                  headers={"Cookie": f"idglow_browser={secrets.token_urlsafe(32)}"})  # remy's own browser
    remy.predict("remy", PASSWORD, api_name="/sign_in")
    assert time.monotonic() - start < 5
    assert "votes" in remy.predict(api_name="/research_refresh")[0]


def test_failed_sign_ins_refuse_that_client_early_with_a_capped_backoff():
    from annotation.store.errors import AuthenticationError
    from annotation.ui.auth import FREE_FAILURES, MAX_DELAY_S, SessionAuth, SignInWait

    class NoUsers:
        """A session factory whose every sign-in fails (the backoff is what is measured)."""

        checks = 0

        def __call__(self):
            return self

        def __enter__(self):
            NoUsers.checks += 1
            raise AuthenticationError("wrong user name or password")

        def __exit__(self, *exc):
            return False

    now, waits = [100.0], []
    auth = SessionAuth(NoUsers(), clock=lambda: now[0])
    for _ in range(FREE_FAILURES + 8):
        try:
            auth.sign_in("rita", "wrong", client="address:1.2.3.4")
        except SignInWait as wait:  # refused unchecked: the client waits, not the server
            waits.append(wait.wait_s)
            assert f"try again in {math.ceil(wait.wait_s)} s" in str(wait)
            now[0] += wait.wait_s
            with pytest.raises(AuthenticationError):
                auth.sign_in("rita", "wrong", client="address:1.2.3.4")
        except AuthenticationError:
            pass
    assert waits[:4] == [0.5, 1.0, 2.0, 4.0] and max(waits) == MAX_DELAY_S and len(waits) == 8
    assert NoUsers.checks == FREE_FAILURES + 8, "a refused attempt is never checked"
    with pytest.raises(AuthenticationError) as other_name:
        auth.sign_in("anna", "wrong", client="address:1.2.3.4")
    with pytest.raises(AuthenticationError) as other_client:
        auth.sign_in("rita", "wrong", client="browser:" + "x" * 40)
    assert not isinstance(other_name.value, SignInWait), "another name is not slowed down"
    assert not isinstance(other_client.value, SignInWait), "another client is not slowed down for that name"


def test_unknown_and_known_user_names_take_about_as_long_to_refuse(tmp_path):
    from store_fixtures import make_store

    from annotation.store.errors import AuthenticationError
    from annotation.store.users import authenticate, create_user

    store = make_store(tmp_path / "data")
    with store.sessions() as session:
        create_user(session, "rita", PASSWORD, "researcher")

    def refusal_s(name: str) -> float:
        with store.sessions() as session:
            start = time.perf_counter()
            with pytest.raises(AuthenticationError, match="wrong user name or password"):
                authenticate(session, name, "not-the-password")
            return time.perf_counter() - start

    refusal_s("warm-up")
    samples = [(refusal_s("rita"), refusal_s(f"nobody{k}")) for k in range(7)]
    known = statistics.median(k for k, _ in samples)
    unknown = statistics.median(u for _, u in samples)
    assert 0.5 < unknown / known < 2.0, (known, unknown)  # the old path answered an unknown name ~100x faster
