"""Event-bus connectors: events in from Kafka (the stream consumer role), impressions and rewards
out to Kafka. :mod:`~liverec.streams.decode` turns a message into validated events (no broker);
:mod:`~liverec.streams.kafka` holds the consumer, the lag records and the sink."""
