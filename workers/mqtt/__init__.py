"""MQTT sinks: events at QoS 1, retained state from the first second, Home Assistant discovery.

Each worker process keeps one connection per MQTT sink for its whole life, opened at
start-up (`Resources.open_sinks`) and reconnected with backoff. On every connect it
publishes `{prefix}/status` = `online` (its last will, retained, says `offline`),
then discovery and the current state of every system the sink covers, from the state
store; it does so again when Home Assistant announces itself (`homeassistant/status`
= `online`). Deliveries publish the event on `events/<TYPE>` (if the sink's `events`
filter lets it through) and, for the events that change it, the retained state.

Several workers share `{prefix}/status`: each publishes the same retained state
(idempotent), and a worker that sees `offline` there while it is itself connected
(another worker's last will, or its clean stop) says `online` again at once, so the
entities go unavailable only when no worker is left.

A publish that fails raises MqttUnavailable; the delivery job then retries with
backoff (deliveries.RetryPolicy), so no event is lost while the broker is down.

The modules, one concept each:
- `connection`: the broker connection (reconnects, last will, `{prefix}/status`,
  Home Assistant's birth), publishing, and what it has retained;
- `projection`: the retained state of each system, and its device discovery;
- `discovery`: the topics and payloads, as pure functions;
- `debounce`: the front waited out while switches come in bursts;
- `endpoint`: the three of them wired together for one sink (`Resources.mqtt`);
- `sender`: a delivery to an MQTT sink;
- `context`: what all this takes from the worker process (`MqttResources`).
"""
