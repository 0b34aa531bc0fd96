"""A policy that a simulator test scripts by its own ``tick`` (and ``route``): the driver's request hooks do nothing
here, and nothing is routed unless the test says where."""


class ScriptedPolicy:
    def tick(self, state, now_s):
        return []

    def route(self, state, model, now_s):
        return None

    def on_request_start(self, model, now_s):
        pass

    def on_request_done(self, model, now_s):
        pass
