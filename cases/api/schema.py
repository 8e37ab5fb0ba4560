"""OpenAPI description of the error answers every operation can give.

`ApiAutoSchema` (REST_FRAMEWORK's DEFAULT_SCHEMA_CLASS) adds to each operation the error
statuses DRF and the views produce for it, unless the view documents that status itself:

- 400 for operations with a body or query parameters (field errors, or a workflow rule's
  `detail`, or a JSON parse error such as nesting deeper than ILDREVIEW_MAX_JSON_DEPTH);
- 403 for operations that need a user (DRF answers 403, not 401, when the credentials are
  missing or wrong, because session authentication comes first; also for a role that may not
  do this);
- 404 for operations with path parameters (no such object, or one the user may not see) and
  for paginated lists (no such page);
- 415 for operations with a request body (a media type the operation does not parse).

Statuses particular to one operation (409 for results not ready, 429 for the login lockout)
are documented on the view.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from cases.api.serializers import ErrorSerializer


class ValidationErrorSerializer(serializers.Serializer):
    """A 400 body: field name -> messages (see ValidationErrorSchema for its OpenAPI form)."""


class ValidationErrorSchema(OpenApiSerializerExtension):
    """DRF's validation error body: an object keyed by field names whose values are lists of
    messages (an object for nested fields), or `detail` for an error of the whole request."""

    target_class = ValidationErrorSerializer

    def get_name(self, auto_schema, direction) -> str:
        return "ValidationError"

    def map_serializer(self, auto_schema, direction):
        messages = {"type": "array", "items": {"type": "string"}}
        return {
            "type": "object",
            "description": "Field name -> messages (an object for nested fields); `detail` "
            "for an error of the whole request, `non_field_errors` for one of several fields.",
            "properties": {
                "detail": {"type": "string"},
                "non_field_errors": messages,
            },
            "additionalProperties": {"anyOf": [messages, {"type": "object"}]},
        }


BAD_REQUEST = OpenApiResponse(
    ValidationErrorSerializer,
    description="Invalid input, or refused by a rule of the workflow (`detail` says which).",
)
FORBIDDEN = OpenApiResponse(
    ErrorSerializer,
    description="Not logged in (no, expired or wrong session or token), or the user's role "
    "may not do this.",
)
NOT_FOUND = OpenApiResponse(
    ErrorSerializer,
    description="No such object, or one the user may not see; for lists, no such page.",
)
UNSUPPORTED_MEDIA_TYPE = OpenApiResponse(
    ErrorSerializer, description="The body is not in a media type this operation accepts."
)
TOO_MANY_REQUESTS = OpenApiResponse(
    ErrorSerializer,
    description="Too many failed logins for this username from this address; `detail` says "
    "how long the lockout lasts.",
)


class ApiAutoSchema(AutoSchema):
    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        responses = operation["responses"]
        for code, response in self._common_errors(operation).items():
            if code not in responses:
                responses[code] = self._get_response_for_code(response, code)
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _common_errors(self, operation: dict) -> dict[str, OpenApiResponse]:
        parameters = operation.get("parameters", [])
        has_body = "requestBody" in operation
        errors = {}
        if self.method in ("POST", "PUT", "PATCH", "DELETE") or any(
            p["in"] == "query" for p in parameters
        ):
            errors["400"] = BAD_REQUEST
        if any(not isinstance(p, AllowAny) for p in self.view.get_permissions()):
            errors["403"] = FORBIDDEN
        if any(p["in"] == "path" for p in parameters) or any(
            p["in"] == "query" and p["name"] == "page" for p in parameters
        ):
            errors["404"] = NOT_FOUND
        if has_body:
            errors["415"] = UNSUPPORTED_MEDIA_TYPE
        return errors
