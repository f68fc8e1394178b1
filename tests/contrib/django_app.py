"""The URLconf of the Django request tests (``ROOT_URLCONF``): views that read-modify-write ``request.session``.

A test makes requests overlap by passing a callable in the WSGI environ, ``test.pause`` (Django's test ``Client``
puts extra keyword arguments there): the views call it after the session has been loaded and before they change it.
Every view answers the session's data as JSON.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model, login
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.utils import timezone

PAUSE = "test.pause"


def _loaded(request: HttpRequest) -> Any:
    session = request.session
    session.keys()  # loads it
    request.META.get(PAUSE, lambda: None)()
    return session


def _answer(session: Any) -> HttpResponse:
    return HttpResponse(json.dumps(dict(session.items())), content_type="application/json")


def write(request: HttpRequest) -> HttpResponse:
    """Set each query parameter as a session key (string values)."""
    session = _loaded(request)
    for name, value in request.GET.items():
        session[name] = value
    return _answer(session)


def increment(request: HttpRequest) -> HttpResponse:
    """Add one to the counter ``?key=``."""
    session = _loaded(request)
    name = request.GET["key"]
    session[name] = session.get(name, 0) + 1
    return _answer(session)


def read(request: HttpRequest) -> HttpResponse:
    return _answer(_loaded(request))


def rewrite(request: HttpRequest) -> HttpResponse:
    """Assign every key its current value: the session is marked modified, but nothing changed."""
    session = _loaded(request)
    for name in list(session.keys()):
        session[name] = session[name]
    return _answer(session)


def unserializable(request: HttpRequest) -> HttpResponse:
    """Change ``changed`` and put a value JSON cannot hold under ``not_json``."""
    session = _loaded(request)
    session["changed"] = "yes"
    session["not_json"] = object()
    return HttpResponse("set")


def expiry(request: HttpRequest) -> HttpResponse:
    """``set_expiry``: ``?seconds=N`` (0: at browser close), ``?at=N`` (a datetime N seconds ahead), ``?default``."""
    session = _loaded(request)
    if "seconds" in request.GET:
        session.set_expiry(int(request.GET["seconds"]))
    elif "at" in request.GET:
        session.set_expiry(timezone.now() + timedelta(seconds=int(request.GET["at"])))
    else:
        session.set_expiry(None)
    session["expiry_set"] = True
    return HttpResponse(str(session.get_expiry_age()))


def log_in(request: HttpRequest) -> HttpResponse:
    """``django.contrib.auth.login`` as the user ``?user=<pk>``."""
    _loaded(request)
    user = get_user_model().objects.get(pk=int(request.GET["user"]))
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return _answer(request.session)


def log_out(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return HttpResponse("logged out")


urlpatterns = [
    path("write/", write),
    path("increment/", increment),
    path("read/", read),
    path("rewrite/", rewrite),
    path("unserializable/", unserializable),
    path("expiry/", expiry),
    path("login/", log_in),
    path("logout/", log_out),
]
