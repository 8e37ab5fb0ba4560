"""Server-rendered pages (thin: reads via selectors, writes via services)."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def worklist(request: HttpRequest) -> HttpResponse:
    return render(request, "cases/worklist.html", {})
