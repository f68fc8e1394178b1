"""The example's views: read-modify-write of a session key, the session as JSON, a login that cycles the key."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.urls import path
from django.views.decorators.http import require_GET, require_POST


def _public(request: HttpRequest) -> JsonResponse:
    return JsonResponse({key: value for key, value in request.session.items() if not key.startswith("_")})


@require_POST
def incr(request: HttpRequest, name: str) -> HttpResponse:
    """session[name] += 1. Only this key is written back (merged into the stored session): another request of the
    same session changing another key at the same time keeps its change."""
    request.session[name] = request.session.get(name, 0) + 1
    return _public(request)


@require_GET
def show(request: HttpRequest) -> HttpResponse:
    return _public(request)


@require_POST
def login(request: HttpRequest) -> HttpResponse:
    """A login without a password check: a new session key for the same data, the old key gone (session-fixation
    defence; fmredis moves the session in one step). A real project calls ``django.contrib.auth.login(request,
    user)``, which cycles the key too and sends ``user_logged_in``: the engine then lists the session under the
    user's id, so ``fmredis.contrib.django.get_store().delete_user_sessions(user_id)`` logs them out everywhere."""
    user_id = request.POST.get("user_id", "")
    if not user_id:
        return HttpResponseBadRequest("user_id is required\n", content_type="text/plain")
    request.session.cycle_key()
    request.session["user_id"] = user_id
    return _public(request)


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    request.session.flush()  # the stored session is deleted and the cookie removed
    return _public(request)


urlpatterns = [
    path("incr/<str:name>", incr),
    path("session", show),
    path("login", login),
    path("logout", logout),
]
