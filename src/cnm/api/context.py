"""What every route handler needs, stored once on the application."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from cnm.api.schemas_system import VersionInfo
from cnm.engine.controller import Controller
from cnm.runtime.api import Process

API_KEY: web.AppKey[Api] = web.AppKey("cnm_api")


@dataclass(frozen=True, slots=True)
class Api:
    controller: Controller
    version_info: VersionInfo
    tmp_dir: str
    ui_url: str = ""  # the live page's URL with its token (cnmd --ui-addr); "" = none
    # exec id -> the process being streamed, so /exec/{id}/resize can reach its tty
    processes: dict[str, Process] = field(default_factory=dict)

    @staticmethod
    def of(request: web.Request) -> Api:
        return request.app[API_KEY]
