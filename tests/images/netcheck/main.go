// Command netcheck is the test node's one workload image:
//
//	netcheck serve [-port 8080]          a TCP server: each connection gets
//	                                     "hello from <hostname> <local addr>\n",
//	                                     then every line it sends echoed back
//	netcheck probe [-timeout 5s] ADDR    connects to ADDR (host:port), sends a
//	                                     line, prints what came back; exit 1
//	                                     with the reason when it fails
//	netcheck hold [-for 20s] [-every 100ms] [-timeout 2s] ADDR
//	                                     one connection held open: a line out
//	                                     and its echo back every -every for
//	                                     -for; exit 1 at the first echo that
//	                                     misses -timeout, saying after how many
//
// Tests run `serve` as the container's command and exec `probe` inside
// another pod (kubectl exec), so a connection is made from a pod's own
// network namespace through the node's CNI.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ExitOnError)
		port := fs.Int("port", 8080, "TCP port to listen on (all addresses)")
		_ = fs.Parse(os.Args[2:])
		serve(*port)
	case "probe":
		fs := flag.NewFlagSet("probe", flag.ExitOnError)
		timeout := fs.Duration("timeout", 5*time.Second, "connect and read deadline")
		_ = fs.Parse(os.Args[2:])
		if fs.NArg() != 1 {
			usage()
		}
		if err := probe(fs.Arg(0), *timeout); err != nil {
			fmt.Fprintf(os.Stderr, "probe %s: %v\n", fs.Arg(0), err)
			os.Exit(1)
		}
	case "hold":
		fs := flag.NewFlagSet("hold", flag.ExitOnError)
		total := fs.Duration("for", 20*time.Second, "how long to hold the connection")
		every := fs.Duration("every", 100*time.Millisecond, "pause between round trips")
		timeout := fs.Duration("timeout", 2*time.Second, "deadline of each round trip")
		_ = fs.Parse(os.Args[2:])
		if fs.NArg() != 1 {
			usage()
		}
		if err := hold(fs.Arg(0), *total, *every, *timeout); err != nil {
			fmt.Fprintf(os.Stderr, "hold %s: %v\n", fs.Arg(0), err)
			os.Exit(1)
		}
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: netcheck serve [-port N] | netcheck probe [-timeout D] HOST:PORT | netcheck hold [-for D] [-every D] [-timeout D] HOST:PORT")
	os.Exit(2)
}

func serve(port int) {
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		fmt.Fprintf(os.Stderr, "listen: %v\n", err)
		os.Exit(1)
	}
	host, _ := os.Hostname()
	fmt.Printf("netcheck serving on %s as %s\n", ln.Addr(), host)
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		os.Exit(0)
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			continue
		}
		go func(c net.Conn) {
			defer c.Close()
			fmt.Fprintf(c, "hello from %s %s\n", host, c.LocalAddr())
			lines := bufio.NewScanner(c)
			for lines.Scan() {
				fmt.Fprintf(c, "%s\n", lines.Text())
			}
		}(conn)
	}
}

func probe(addr string, timeout time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	greeting, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the greeting: %w", err)
	}
	if _, err := fmt.Fprintf(conn, "ping from %s\n", conn.LocalAddr()); err != nil {
		return err
	}
	echo, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the echo: %w", err)
	}
	fmt.Printf("%sfrom %s: %s", greeting, conn.LocalAddr(), echo)
	return nil
}

func hold(addr string, total, every, timeout time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := r.ReadString('\n'); err != nil {
		return fmt.Errorf("reading the greeting: %w", err)
	}
	start := time.Now()
	trips := 0
	for time.Since(start) < total {
		if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
			return err
		}
		want := fmt.Sprintf("trip %d", trips)
		if _, err := fmt.Fprintf(conn, "%s\n", want); err != nil {
			return fmt.Errorf("after %d round trips (%v): writing: %w", trips, time.Since(start).Round(time.Millisecond), err)
		}
		got, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("after %d round trips (%v): reading: %w", trips, time.Since(start).Round(time.Millisecond), err)
		}
		if got != want+"\n" {
			return fmt.Errorf("after %d round trips: echo %q, want %q", trips, got, want)
		}
		trips++
		time.Sleep(every)
	}
	fmt.Printf("held %s -> %s for %v: %d round trips, none missed\n", conn.LocalAddr(), conn.RemoteAddr(), time.Since(start).Round(time.Millisecond), trips)
	return nil
}
