"""The guide's view (section 2 of the integration guide), copied as written.

Two changes only, neither of which alters what is sent or how: the guide's missing
`import os` is added, and the upstream URL comes from settings so the benchmark can point it
at the local fake instead of api.openai.com. Everything else is the guide's: a bare
requests.post per call (no timeout, no session reuse), the hard-coded workflow id, the
"anonymous" user, print() on error and the upstream's status and text passed through.
"""

import os

import requests
from django.conf import settings
from rest_framework.decorators import api_view
from rest_framework.response import Response


@api_view(["POST"])
def create_chatkit_session(request):
    openai_api_key = os.getenv("OPENAI_API_KEY")
    workflow_id = (
        "wf_68ee92d551ac819096e06e9789e4accf05c17f1103e9f72d"  # Replace with your workflow ID
    )
    url = settings.NAIVE_UPSTREAM_URL
    headers = {
        "Authorization": f"Bearer {openai_api_key}",
        "Content-Type": "application/json",
        "OpenAI-Beta": "chatkit_beta=v1",
    }
    # Use authenticated user's username if available, otherwise use a placeholder
    user_id = (
        request.user.username if request.user and request.user.is_authenticated else "anonymous"
    )
    data = {
        "workflow": {"id": workflow_id},
        "user": user_id,
    }
    response = requests.post(url, headers=headers, json=data)  # noqa: S113 - as the guide
    if response.status_code == 200:
        client_secret = response.json().get("client_secret")
        return Response({"client_secret": client_secret})
    else:
        print("ChatKit session creation error:", response.text)
        return Response({"error": response.text}, status=response.status_code)
