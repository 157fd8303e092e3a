// Command order runs the order-fulfilment example end to end in one process: a worker
// and a client on the same backend (the embedded default unless -backend says
// otherwise), four orders that take the four paths through the blueprint, and their
// typed results.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/flowgen/flowgen/examples/generated/orderflow"
	"github.com/flowgen/flowgen/examples/order/nodes"
	"github.com/flowgen/flowgen/runtime"
)

func main() {
	backendURL := flag.String("backend", "", "backend URL (default: the embedded default)")
	flag.Parse()
	if err := run(*backendURL); err != nil {
		fmt.Fprintln(os.Stderr, "order:", err)
		os.Exit(1)
	}
}

func run(backendURL string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := runtime.Open(ctx, backendURL)
	if err != nil {
		return err
	}
	defer c.Close()

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	w := runtime.NewWorker(c, runtime.WithConcurrency(8), runtime.WithLogger(logger))
	orderflow.Register(w)
	wctx, stopWorker := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	defer func() { stopWorker(); <-done }()

	orders := []nodes.Order{
		{ID: "A-1", Customer: "ada", Card: "visa-4242", Items: []nodes.Item{{SKU: "book", Qty: 2, Cents: 1500}}},
		{ID: "A-2", Customer: "bob", Card: "flaky-visa", Items: []nodes.Item{{SKU: "lamp", Qty: 1, Cents: 4000}}},
		{ID: "A-3", Customer: "cy", Card: "declined-mc", Items: []nodes.Item{{SKU: "desk", Qty: 1, Cents: 20000}}},
		{ID: "A-4", Customer: "dee", Card: "visa-1111", Items: []nodes.Item{{SKU: "pens", Qty: 40, Cents: 100}}},
		{ID: "A-5", Customer: "mallory", Card: "visa-6666", Items: []nodes.Item{{SKU: "tv", Qty: 1, Cents: 90000}}},
	}
	ids := make([]runtime.RunID, len(orders))
	for i, o := range orders {
		if ids[i], err = orderflow.StartOrderFulfillmentRun(ctx, c, o); err != nil {
			return err
		}
	}
	for i, id := range ids {
		receipt, err := orderflow.AwaitOrderFulfillmentRun(ctx, c, id)
		if err != nil {
			return fmt.Errorf("order %s: %w", orders[i].ID, err)
		}
		fmt.Printf("%s via %s: %s\n", receipt.OrderID, receipt.Channel, receipt.Message)
	}
	return nil
}
