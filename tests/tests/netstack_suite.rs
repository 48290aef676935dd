//! The NetStack suite on every stack: the kernel (OsStack), two plebnet
//! stacks over MemLink (IPv4 and IPv6), two over kernel UDP (IPv4 and IPv6
//! underlay), and one plebnet stack talking to
//! itself over 127.0.0.1, ::1 and its own overlay address.

macro_rules! suite_on {
    ($module:ident, $env:expr) => {
        mod $module {
            use plebnet_tests::suite;
            macro_rules! t {
                ($name:ident) => {
                    #[test]
                    fn $name() {
                        suite::$name(&$env);
                    }
                };
            }
            t!(tcp_echo_roundtrip);
            t!(backlog_holds_pending_connections);
            t!(connect_to_closed_port_is_refused);
            t!(bind_of_used_port_is_addr_in_use);
            t!(nonblocking_mode_would_block);
            t!(read_timeout_expires);
            t!(half_close);
            t!(close_with_unread_data_resets);
            t!(addresses_match);
            t!(udp_datagrams);
            t!(full_duplex_on_clones);
        }
    };
}

suite_on!(os_stack, plebnet_tests::os_env());
suite_on!(plebnet_pair, plebnet_tests::pair_env());
suite_on!(plebnet_pair_v6, plebnet_tests::pair_v6_env());
suite_on!(plebnet_udp_pair, plebnet_tests::udp_pair_env());
suite_on!(plebnet_udp_pair_v6, plebnet_tests::udp_pair_v6_env());
suite_on!(plebnet_loopback, plebnet_tests::loopback_env());
suite_on!(plebnet_loopback_v6, plebnet_tests::loopback_v6_env());
suite_on!(plebnet_own_address, plebnet_tests::own_address_env());
