from django.urls import path

from naive.views import create_chatkit_session

# The path the guide's frontend calls (section 5): /api/api/chatkit/session/
urlpatterns = [
    path("api/api/chatkit/session/", create_chatkit_session),
]
