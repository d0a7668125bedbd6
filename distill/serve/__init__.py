"""`distill serve`: students and the large model behind one OpenAI-compatible endpoint (issue 20).

config (the YAML), router (the routing, plain Python), student (a vLLM engine per student),
served_log (the redacted call log), app (the Ray Serve deployments)."""
