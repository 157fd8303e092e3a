// Package nodes holds the node functions of the order-fulfilment example: ordinary Go
// functions, each annotated with the blueprint key it implements.
package nodes

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/flowgen/flowgen/runtime"
)

// Order is the run input: what the customer bought and how they pay.
type Order struct {
	ID       string `json:"id"`
	Customer string `json:"customer"`
	Card     string `json:"card"`
	Items    []Item `json:"items"`
}

// Item is one order line.
type Item struct {
	SKU   string `json:"sku"`
	Qty   int    `json:"qty"`
	Cents int    `json:"cents"`
}

// Validated is an order that passed validation.
type Validated struct {
	Order Order `json:"order"`
}

// ValidateOrder rejects orders without items or with non-positive quantities.
//
//flowgen:node validateOrder
func ValidateOrder(ctx context.Context, in Order) (Validated, error) {
	if len(in.Items) == 0 {
		return Validated{}, runtime.Permanent(fmt.Errorf("order %s has no items", in.ID))
	}
	for _, it := range in.Items {
		if it.Qty <= 0 {
			return Validated{}, runtime.Permanent(fmt.Errorf("order %s: %s has quantity %d", in.ID, it.SKU, it.Qty))
		}
	}
	return Validated{Order: in}, nil
}

// Priced is an order with its total.
type Priced struct {
	OrderID  string `json:"orderId"`
	Customer string `json:"customer"`
	Card     string `json:"card"`
	Total    int    `json:"total"`
	Units    int    `json:"units"`
}

// PriceOrder sums the order lines.
//
//flowgen:node priceOrder
func PriceOrder(ctx context.Context, in Validated) (Priced, error) {
	p := Priced{OrderID: in.Order.ID, Customer: in.Order.Customer, Card: in.Order.Card}
	for _, it := range in.Order.Items {
		p.Total += it.Qty * it.Cents
		p.Units += it.Qty
	}
	return p, nil
}

// Stock says whether the warehouse can serve an order.
type Stock struct {
	Order     Priced `json:"order"`
	Available bool   `json:"available"`
}

// CheckInventory pretends that orders of up to 10 units are in stock.
//
//flowgen:node checkInventory
func CheckInventory(ctx context.Context, in Priced) (Stock, error) {
	return Stock{Order: in, Available: in.Units <= 10}, nil
}

// FraudParams tunes the fraud check from the blueprint.
type FraudParams struct {
	// Threshold is the score from which an order is flagged.
	Threshold float64 `json:"threshold"`
	// Blocked lists customers that are always flagged.
	Blocked []string `json:"blocked"`
}

// FraudScore is the fraud check's verdict.
type FraudScore struct {
	Score   float64 `json:"score"`
	Flagged bool    `json:"flagged"`
}

// CheckFraud scores an order: large totals score higher.
//
//flowgen:node checkFraud
func CheckFraud(ctx context.Context, in Priced, p FraudParams) (FraudScore, error) {
	score := float64(in.Total) / 100000
	for _, c := range p.Blocked {
		if c == in.Customer {
			score = 1
		}
	}
	return FraudScore{Score: score, Flagged: score >= p.Threshold}, nil
}

// Credit is the customer's credit check.
type Credit struct {
	Limit int  `json:"limit"`
	OK    bool `json:"ok"`
}

// CheckCredit grants every customer a limit of 500.00.
//
//flowgen:node checkCredit
func CheckCredit(ctx context.Context, in Priced) (Credit, error) {
	return Credit{Limit: 50000, OK: in.Total <= 50000}, nil
}

// Checks joins the three checks: each field is tagged with the node it comes from.
// Credit is a pointer, so a skipped credit check would be told apart from a zero one.
type Checks struct {
	Inventory Stock      `flowgen:"checkInventory"`
	Fraud     FraudScore `flowgen:"checkFraud"`
	Credit    *Credit    `flowgen:"checkCredit"`
}

// Decision is what happens to an order, with the payment to take if it is approved.
type Decision struct {
	OrderID string  `json:"orderId"`
	Total   int     `json:"total"`
	Reason  string  `json:"reason"`
	Payment Payment `json:"payment"`
}

// Payment is a charge to make.
type Payment struct {
	OrderID string `json:"orderId"`
	Card    string `json:"card"`
	Cents   int    `json:"cents"`
}

// Decide routes the order: approve, review by a person, or reject.
//
//flowgen:node decide actions=approve,review,reject
func Decide(ctx context.Context, in Checks) (runtime.Routed[Decision], error) {
	o := in.Inventory.Order
	d := Decision{OrderID: o.OrderID, Total: o.Total, Payment: Payment{OrderID: o.OrderID, Card: o.Card, Cents: o.Total}}
	switch {
	case in.Fraud.Flagged:
		d.Reason = fmt.Sprintf("fraud score %.2f", in.Fraud.Score)
		return runtime.Route("reject", d), nil
	case !in.Inventory.Available || in.Credit == nil || !in.Credit.OK:
		d.Reason = "needs a person: stock or credit"
		return runtime.Route("review", d), nil
	}
	d.Reason = "all checks passed"
	return runtime.Route("approve", d), nil
}

// Outcome is how an order ended.
type Outcome struct {
	OrderID string `json:"orderId"`
	Status  string `json:"status"`
	Detail  string `json:"detail"`
}

// ErrCardDeclined is returned by the payment provider for a declined card.
var ErrCardDeclined = errors.New("card declined")

// ChargeCard takes the payment. Cards starting with "flaky" fail their first attempts
// (see the blueprint's retries); "declined" cards fail for good.
//
//flowgen:node chargeCard
func ChargeCard(ctx context.Context, in Payment) (Outcome, error) {
	switch {
	case strings.HasPrefix(in.Card, "declined"):
		return Outcome{}, runtime.Permanent(ErrCardDeclined)
	case strings.HasPrefix(in.Card, "flaky") && flaky.fail(in.OrderID):
		return Outcome{}, errors.New("payment provider timed out")
	}
	return Outcome{OrderID: in.OrderID, Status: "charged", Detail: fmt.Sprintf("%d cents on %s", in.Cents, in.Card)}, nil
}

// ChargeLater is chargeCard's fallback: it records the order for a later charge.
//
//flowgen:node chargeLater
func ChargeLater(ctx context.Context, in Payment) (Outcome, error) {
	detail := "charge deferred"
	if f := runtime.FailureFrom(ctx); f != nil {
		detail += ": " + f.Err
	}
	return Outcome{OrderID: in.OrderID, Status: "deferred", Detail: detail}, nil
}

// ReviewOrder queues the order for a person.
//
//flowgen:node reviewOrder
func ReviewOrder(ctx context.Context, in Decision) (Outcome, error) {
	return Outcome{OrderID: in.OrderID, Status: "in review", Detail: in.Reason}, nil
}

// RejectOrder cancels the order.
//
//flowgen:node rejectOrder
func RejectOrder(ctx context.Context, in Decision) (Outcome, error) {
	return Outcome{OrderID: in.OrderID, Status: "rejected", Detail: in.Reason}, nil
}

// NotifyParams configures the customer notification.
type NotifyParams struct {
	Channel  string            `json:"channel"`
	Template string            `json:"template"`
	Headers  map[string]string `json:"headers"`
	CC       *string           `json:"cc"`
}

// Receipt is what the customer was told.
type Receipt struct {
	OrderID string `json:"orderId"`
	Channel string `json:"channel"`
	Message string `json:"message"`
}

// NotifyCustomer tells the customer how the order ended, whichever branch ran.
//
//flowgen:node notifyCustomer
func NotifyCustomer(ctx context.Context, in Outcome, p NotifyParams) (Receipt, error) {
	msg := strings.NewReplacer("{order}", in.OrderID, "{status}", in.Status).Replace(p.Template)
	if in.Detail != "" {
		msg += " (" + in.Detail + ")"
	}
	return Receipt{OrderID: in.OrderID, Channel: p.Channel, Message: msg}, nil
}
