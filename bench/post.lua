-- wrk script: every request is a POST of the JSON body {} (what ChatKit's first call sends
-- when it holds no secret yet). Used for both servers in bench/compare.py.
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
