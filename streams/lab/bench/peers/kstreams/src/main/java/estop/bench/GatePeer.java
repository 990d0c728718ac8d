package estop.bench;

import java.nio.charset.StandardCharsets;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Branched;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.FixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorSupplier;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.TimestampedKeyValueStore;

/**
 * The gate job the way a Kafka Streams user would write it: campaign-control as a GlobalKTable,
 * each send request looked up by its campaign_id header, exactly_once_v2. Not stopped: forwarded
 * as is to the dispatch topic; stopped: routed to the notsent topic. A record without the Avro
 * single-object marker goes to the dead-letter topic.
 *
 * Usage: GatePeer BOOTSTRAP APPLICATION_ID SOURCE CONTROL DISPATCH NOTSENT DEADLETTER STATE_DIR
 */
public final class GatePeer {
    private static final String STORE = "campaign-control-store";

    private GatePeer() {
    }

    public static void main(String[] args) throws InterruptedException {
        String bootstrap = args[0], applicationId = args[1], source = args[2], control = args[3];
        String dispatch = args[4], notsent = args[5], deadLetter = args[6], stateDir = args[7];
        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");

        StreamsBuilder builder = new StreamsBuilder();
        builder.globalTable(control, Consumed.with(Serdes.String(), Serdes.ByteArray()),
                Materialized.<String, byte[], KeyValueStore<Bytes, byte[]>>as(STORE));
        FixedKeyProcessorSupplier<byte[], byte[], byte[]> route = Route::new;
        KStream<byte[], byte[]> requests = builder
                .stream(source, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
                .processValues(route);
        requests.split()
                .branch((key, value) -> value.length > 0 && value[0] == 'P',
                        Branched.withConsumer(b -> b.mapValues(GatePeer::body)
                                .to(dispatch, Produced.with(Serdes.ByteArray(), Serdes.ByteArray()))))
                .branch((key, value) -> value.length > 0 && value[0] == 'S',
                        Branched.withConsumer(b -> b.mapValues(GatePeer::body)
                                .to(notsent, Produced.with(Serdes.ByteArray(), Serdes.ByteArray()))))
                .defaultBranch(Branched.withConsumer(b -> b.mapValues(GatePeer::body)
                        .to(deadLetter, Produced.with(Serdes.ByteArray(), Serdes.ByteArray()))));

        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        CountDownLatch done = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            done.countDown();
        }));
        streams.start();
        done.await();
    }

    private static byte[] body(byte[] routed) {
        byte[] out = new byte[routed.length - 1];
        System.arraycopy(routed, 1, out, 0, out.length);
        return out;
    }

    /** Tags each value with its route: P(ass), S(topped) or D(ead letter). */
    private static final class Route implements FixedKeyProcessor<byte[], byte[], byte[]> {
        private FixedKeyProcessorContext<byte[], byte[]> context;
        private TimestampedKeyValueStore<String, byte[]> stops;

        @Override
        public void init(FixedKeyProcessorContext<byte[], byte[]> context) {
            this.context = context;
            this.stops = context.getStateStore(STORE);
        }

        @Override
        public void process(FixedKeyRecord<byte[], byte[]> record) {
            byte[] value = record.value();
            Header campaign = record.headers().lastHeader("campaign_id");
            char route;
            if (value == null || value.length < 10 || (value[0] & 0xff) != 0xc3 || value[1] != 0x01
                    || campaign == null) {
                route = 'D';
            } else {
                String id = new String(campaign.value(), StandardCharsets.UTF_8);
                route = stops.get(id) == null ? 'P' : 'S';
            }
            byte[] tagged = new byte[(value == null ? 0 : value.length) + 1];
            tagged[0] = (byte) route;
            if (value != null) {
                System.arraycopy(value, 0, tagged, 1, value.length);
            }
            context.forward(record.withValue(tagged));
        }
    }
}
