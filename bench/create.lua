-- wrk script: what the broker itself sends the upstream, a valid session create with the key
-- and the beta header. Used by bench/wrk_ceiling.py to load the emulator with no server between.
wrk.method = "POST"
wrk.body = '{"workflow": {"id": "wf_bench"}, "user": "bench-user"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-key-0123456789abcdef"
wrk.headers["OpenAI-Beta"] = "chatkit_beta=v1"
