"""Asynchronous generation jobs: accept at once, run on any replica, report back by webhook.

``model`` holds a job's record and public view, ``codec`` turns a generate job and its outcome
into JSON, ``memory_queue`` / ``redis_queue`` store and hand out jobs (the Redis one shared by
every replica, durable across crashes), ``worker`` runs them through the generate service,
``signing`` and ``webhooks`` deliver signed notifications, ``service`` is what the routes call and
``setup`` wires it all from settings. Nothing here imports the web layer.
"""
